//! The NoCloud seed: where a guest finds it, and the meta-data in it.
//!
//! The same types serve both sides: the first-boot agent parses what the server serves, and the
//! server (deploy) renders meta-data and the SMBIOS serial with them, so the two cannot drift
//! apart.
//! Everything here is pure: no I/O.

use std::fmt;

/// The most meta-data the agent accepts. Real meta-data is a few hundred bytes; the bound keeps a
/// confused or hostile server from making the agent allocate without limit.
pub const MAX_META_DATA: usize = 64 * 1024;
/// The most user-data the agent accepts (cloud-init has no fixed limit; an app list is far
/// smaller).
pub const MAX_USER_DATA: usize = 1024 * 1024;

/// Longest seed URL accepted: SMBIOS strings and kernel command lines are short anyway.
const MAX_URL: usize = 2048;
/// Longest instance-id accepted. cloud-init uses it as a directory name, so it stays a file name.
const MAX_INSTANCE_ID: usize = 255;
/// Longest host name as a whole (RFC 1035) and per label; a label is also what `sethostname` takes,
/// whose limit on Linux is 64 bytes.
const MAX_FQDN: usize = 253;
const MAX_LABEL: usize = 63;

/// What is wrong with a seed location or its meta-data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("seed URL {url:?}: {problem}")]
    Url { url: String, problem: String },
    #[error(
        "{source_name} names the NoCloud datasource ({spec:?}) but gives no seed URL (s= or seedfrom=)"
    )]
    NoUrl {
        source_name: &'static str,
        spec: String,
    },
    #[error("meta-data line {line}: {problem}")]
    Syntax { line: usize, problem: String },
    #[error("meta-data is not UTF-8 text")]
    NotUtf8,
    #[error("meta-data has no instance-id")]
    NoInstanceId,
    #[error("meta-data instance-id {value:?}: {problem}")]
    InstanceId { value: String, problem: String },
    #[error("meta-data local-hostname {value:?}: {problem}")]
    Hostname { value: String, problem: String },
}

/// A validated seed location: `http://host[:port]/path/`, the path ending in `/` so that
/// `meta-data`, `user-data` and `ready` are appended to it, as cloud-init does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedUrl {
    url: String,
    host: String,
    port: u16,
    path: String,
}

impl SeedUrl {
    /// Parses and checks a seed URL; a missing trailing `/` is added.
    pub fn parse(text: &str) -> Result<Self, SeedError> {
        let bad = |problem: &str| SeedError::Url {
            url: text.to_owned(),
            problem: problem.to_owned(),
        };
        if text.len() > MAX_URL {
            return Err(bad(&format!("longer than {MAX_URL} bytes")));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(bad(&format!(
                "contains {c:?}; only printable ASCII without spaces is allowed"
            )));
        }
        let scheme_end = text.find("://").ok_or_else(|| bad("not an http:// URL"))?;
        let scheme = &text[..scheme_end];
        if scheme.eq_ignore_ascii_case("https") {
            // The seed comes over the hypervisor's own network; carrying a TLS stack in every
            // guest for it is not worth its size. The seed token in the path is what authorises.
            return Err(bad(
                "https is not supported by slipway-firstboot; the seed is served over plain http",
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(bad(&format!(
                "scheme {scheme:?} is not supported; use http://"
            )));
        }
        let rest = &text[scheme_end + 3..];
        if rest.contains(['?', '#']) {
            return Err(bad("a seed URL names a directory: no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let (host, port) = split_authority(authority).map_err(|p| bad(&p))?;
        let mut path = path.to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        let url = format!("http://{authority}{path}");
        Ok(SeedUrl {
            url,
            host,
            port,
            path,
        })
    }

    /// The URL as text, ending in `/`.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The host to connect to: a name, an IPv4 address, or an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value of the `Host` header: the authority as written.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The request path of a file in the seed, e.g. `meta-data`.
    pub fn path_of(&self, name: &str) -> String {
        format!("{}{name}", self.path)
    }

    /// The SMBIOS type 1 serial that points a guest at this seed, for QEMU's
    /// `-smbios type=1,serial=...`. The `nocloud-net` form, because Debian bookworm's cloud-init
    /// 22.4 fetches a `ds=nocloud;s=` seed and then discards it.
    pub fn smbios_serial(&self) -> String {
        format!("ds=nocloud-net;s={}", self.url)
    }
}

impl fmt::Display for SeedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

fn split_authority(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed [ in the host")?;
        let host = &rest[..end];
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the IPv6 address")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("{p:?} is not a port number")),
        },
    };
    Ok((host.to_owned(), port))
}

/// Where a seed location was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedSource {
    /// The SMBIOS system serial number (`/sys/class/dmi/id/product_serial`).
    DmiSerial,
    /// The kernel command line (`/proc/cmdline`).
    Cmdline,
}

impl SeedSource {
    pub fn name(self) -> &'static str {
        match self {
            SeedSource::DmiSerial => "the SMBIOS serial",
            SeedSource::Cmdline => "the kernel command line",
        }
    }
}

/// Finds the seed the way cloud-init's NoCloud datasource does: a `ds=nocloud-net;s=<url>` (or
/// `ds=nocloud;...`, with `s=` or `seedfrom=`) in the SMBIOS serial or on the kernel command
/// line. The command line wins when both have one, as in cloud-init, where it is read last and
/// overrides. `Ok(None)` when neither names NoCloud.
pub fn find_seed(
    dmi_serial: Option<&str>,
    cmdline: Option<&str>,
) -> Result<Option<(SeedUrl, SeedSource)>, SeedError> {
    if let Some(cmdline) = cmdline {
        for word in cmdline.split_ascii_whitespace() {
            let word = word.trim_matches(|c| c == '"' || c == '\'');
            if let Some(url) = parse_ds(word, SeedSource::Cmdline)? {
                return Ok(Some((url, SeedSource::Cmdline)));
            }
        }
    }
    if let Some(serial) = dmi_serial {
        // The whole serial is the spec; firmware pads some serials with spaces or NULs.
        let serial = serial.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if let Some(url) = parse_ds(serial, SeedSource::DmiSerial)? {
            return Ok(Some((url, SeedSource::DmiSerial)));
        }
    }
    Ok(None)
}

/// Parses one `ds=nocloud[-net];key=value;...` spec; `Ok(None)` when it is not a NoCloud spec.
fn parse_ds(spec: &str, source: SeedSource) -> Result<Option<SeedUrl>, SeedError> {
    let mut parts = spec.split(';');
    match parts.next() {
        Some("ds=nocloud" | "ds=nocloud-net") => {}
        _ => return Ok(None),
    }
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if key == "s" || key == "seedfrom" {
            return SeedUrl::parse(value).map(Some);
        }
    }
    Err(SeedError::NoUrl {
        source_name: source.name(),
        spec: spec.to_owned(),
    })
}

/// A validated host name: letters, digits and `-` in dot-separated labels, as RFC 1123 allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    pub fn parse(value: &str) -> Result<Self, SeedError> {
        let bad = |problem: String| SeedError::Hostname {
            value: value.to_owned(),
            problem,
        };
        check_text(value, MAX_FQDN, "characters").map_err(bad)?;
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(bad(format!(
                "contains {c:?}; only letters, digits, '-' and '.' are allowed"
            )));
        }
        for label in value.split('.') {
            if label.is_empty() {
                return Err(bad(
                    "has an empty label (a leading, trailing or doubled '.')".into(),
                ));
            }
            if label.len() > MAX_LABEL {
                return Err(bad(format!(
                    "has a label of {} characters; at most {MAX_LABEL} are allowed",
                    label.len()
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad(format!("label {label:?} starts or ends with '-'")));
            }
        }
        Ok(Hostname(value.to_owned()))
    }

    /// The name as given: fully qualified when it has dots.
    pub fn fqdn(&self) -> &str {
        &self.0
    }

    /// The first label: what the kernel's host name and `/etc/hostname` get, as Debian does.
    pub fn short(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every seed value must be: no control characters, not empty, at most `max` long.
fn check_text(value: &str, max: usize, unit: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character U+{:04X}", c as u32));
    }
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > max {
        return Err(format!(
            "is {} {unit} long; at most {max} are allowed",
            value.len()
        ));
    }
    Ok(())
}

/// Checks an instance-id: it names a directory in cloud-init and a line in Slipway's state file.
pub fn check_instance_id(value: &str) -> Result<(), SeedError> {
    let bad = |problem: String| SeedError::InstanceId {
        value: value.to_owned(),
        problem,
    };
    check_text(value, MAX_INSTANCE_ID, "bytes").map_err(bad)?;
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || *c == '/' || *c == '\\')
    {
        return Err(bad(format!(
            "contains {c:?}; whitespace, '/' and '\\' are not allowed"
        )));
    }
    if value == "." || value == ".." {
        return Err(bad("is not a usable name".into()));
    }
    Ok(())
}

/// NoCloud meta-data: the two keys Slipway reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaData {
    pub instance_id: String,
    pub local_hostname: Option<Hostname>,
}

impl MetaData {
    /// Parses the YAML subset NoCloud meta-data uses: top-level `key: value` lines, values plain,
    /// 'single-' or "double-quoted". Other keys, comments, document markers and indented (nested)
    /// lines are skipped; `instance-id` and `local-hostname` must be simple scalars, once each.
    pub fn parse(bytes: &[u8]) -> Result<Self, SeedError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SeedError::NotUtf8)?;
        let mut instance_id = None;
        let mut hostname = None;
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let syntax = |problem: String| SeedError::Syntax {
                line: line_no,
                problem,
            };
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim();
            if trimmed.is_empty()
                || trimmed.starts_with('#')
                || line.starts_with([' ', '\t'])
                || trimmed == "---"
                || trimmed == "..."
                || trimmed.starts_with("%")
            {
                continue;
            }
            if trimmed.starts_with('{') {
                return Err(syntax(
                    "JSON (flow) meta-data is not supported; use `key: value` lines".into(),
                ));
            }
            let Some((key, value)) = split_key(line) else {
                return Err(syntax(format!(
                    "expected `key: value`, found {:?}",
                    clip(trimmed)
                )));
            };
            let slot = match key {
                "instance-id" => &mut instance_id,
                "local-hostname" => &mut hostname,
                _ => continue,
            };
            if slot.is_some() {
                return Err(syntax(format!("{key} is given twice")));
            }
            *slot = Some(scalar(value).map_err(|p| syntax(format!("{key}: {p}")))?);
        }
        let instance_id = instance_id.ok_or(SeedError::NoInstanceId)?;
        check_instance_id(&instance_id)?;
        let local_hostname = match hostname {
            // An empty value is YAML's null: no host name given.
            Some(h) if !h.is_empty() => Some(Hostname::parse(&h)?),
            _ => None,
        };
        Ok(MetaData {
            instance_id,
            local_hostname,
        })
    }

    /// Renders meta-data that [`MetaData::parse`] and cloud-init both read. Values are
    /// double-quoted so that no instance-id can be mistaken for YAML syntax.
    pub fn to_yaml(&self) -> String {
        let mut out = format!("instance-id: {}\n", yaml_quote(&self.instance_id));
        if let Some(h) = &self.local_hostname {
            out.push_str(&format!("local-hostname: {}\n", yaml_quote(h.fqdn())));
        }
        out
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Splits `key: value` (or `key:` at the end of the line) at the first colon that YAML would read
/// as the mapping indicator. Quoted keys are unquoted.
fn split_key(line: &str) -> Option<(&str, &str)> {
    let mut search = 0;
    while let Some(i) = line[search..].find(':') {
        let at = search + i;
        let after = &line[at + 1..];
        if after.is_empty() || after.starts_with([' ', '\t']) {
            let key = line[..at].trim();
            let key = key
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
                .unwrap_or(key);
            return Some((key, after));
        }
        search = at + 1;
    }
    None
}

/// Decodes a one-line scalar value.
fn scalar(value: &str) -> Result<String, String> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('"') {
        let (decoded, after) = double_quoted(rest)?;
        trailing_comment_only(after)?;
        return Ok(decoded);
    }
    if let Some(rest) = value.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if rest[i + 1..].starts_with('\'') {
                    out.push('\'');
                    chars.next();
                    continue;
                }
                trailing_comment_only(&rest[i + 1..])?;
                return Ok(out);
            }
            out.push(c);
        }
        return Err("unterminated single-quoted value".into());
    }
    if let Some(c) = value.chars().next()
        && matches!(c, '|' | '>' | '[' | '{' | '&' | '*' | '!' | '@' | '`')
    {
        return Err(format!(
            "a value starting with {c:?} (block, flow, anchor or tag) is not supported"
        ));
    }
    // A plain scalar ends where a comment (` #`) begins.
    let plain = match value.find(" #").or_else(|| value.find("\t#")) {
        Some(i) => &value[..i],
        None => value,
    };
    Ok(plain.trim_end().to_owned())
}

fn trailing_comment_only(after: &str) -> Result<(), String> {
    let after = after.trim();
    if after.is_empty() || after.starts_with('#') {
        Ok(())
    } else {
        Err(format!(
            "unexpected {:?} after the quoted value",
            clip(after)
        ))
    }
}

/// Decodes the inside of a double-quoted scalar up to its closing quote; returns the value and
/// what follows the quote. Escapes are decoded (so `"a\nb"` yields a newline, which the checks
/// after then refuse, rather than slipping through as two harmless-looking characters).
fn double_quoted(rest: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &rest[i + 1..])),
            '\\' => {
                let (_, e) = chars.next().ok_or("unterminated escape")?;
                let hex =
                    |chars: &mut std::str::CharIndices<'_>, n: usize| -> Result<char, String> {
                        let digits: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                        u32::from_str_radix(&digits, 16)
                            .ok()
                            .filter(|_| digits.len() == n)
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("bad escape \\{e}{digits}"))
                    };
                out.push(match e {
                    '0' => '\0',
                    'a' => '\x07',
                    'b' => '\x08',
                    't' | '\t' => '\t',
                    'n' => '\n',
                    'v' => '\x0b',
                    'f' => '\x0c',
                    'r' => '\r',
                    'e' => '\x1b',
                    ' ' => ' ',
                    '"' => '"',
                    '/' => '/',
                    '\\' => '\\',
                    'x' => hex(&mut chars, 2)?,
                    'u' => hex(&mut chars, 4)?,
                    'U' => hex(&mut chars, 8)?,
                    other => return Err(format!("unknown escape \\{other}")),
                });
            }
            c => out.push(c),
        }
    }
    Err("unterminated double-quoted value".into())
}

fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_url_forms() {
        let u = SeedUrl::parse("http://10.0.2.2:7780/seed/abc").unwrap();
        assert_eq!(u.as_str(), "http://10.0.2.2:7780/seed/abc/");
        assert_eq!((u.host(), u.port()), ("10.0.2.2", 7780));
        assert_eq!(u.path_of("meta-data"), "/seed/abc/meta-data");
        assert_eq!(u.host_header(), "10.0.2.2:7780");
        let u = SeedUrl::parse("http://seed.example").unwrap();
        assert_eq!(
            (u.port(), u.path_of("x").as_str(), u.host_header()),
            (80, "/x", "seed.example".into())
        );
        let u = SeedUrl::parse("HTTP://[fe80::1]:81/s/").unwrap();
        assert_eq!(
            (u.host(), u.host_header()),
            ("fe80::1", "[fe80::1]:81".into())
        );
        assert_eq!(u.smbios_serial(), "ds=nocloud-net;s=http://[fe80::1]:81/s/");
        for bad in [
            "https://x/",
            "ftp://x/",
            "x/",
            "http:///p",
            "http://a b/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:+80/",
            "http://u@h/",
            "http://h/p?q",
            "http://h\n/",
            "http://[zz]/",
        ] {
            assert!(SeedUrl::parse(bad).is_err(), "{bad} accepted");
        }
        let e = SeedUrl::parse("https://x/").unwrap_err().to_string();
        assert!(e.contains("https is not supported"), "{e}");
    }

    #[test]
    fn finds_the_seed_like_nocloud() {
        let (u, s) = find_seed(Some("ds=nocloud-net;s=http://10.0.2.2:7780/seed/t1/"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (u.as_str(), s),
            ("http://10.0.2.2:7780/seed/t1/", SeedSource::DmiSerial)
        );
        let (u, _) = find_seed(Some("ds=nocloud;seedfrom=http://h/x  \0"), None)
            .unwrap()
            .unwrap();
        assert_eq!(u.as_str(), "http://h/x/");
        let (u, s) = find_seed(
            Some("ds=nocloud-net;s=http://dmi/"),
            Some("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro \"ds=nocloud;h=x;s=http://cmd:1/a\" quiet"),
        )
        .unwrap()
        .unwrap();
        assert_eq!((u.as_str(), s), ("http://cmd:1/a/", SeedSource::Cmdline));
        assert_eq!(
            find_seed(
                Some("Not Specified"),
                Some("root=/dev/sda ds=nocloudx;s=http://h/")
            )
            .unwrap(),
            None
        );
        assert_eq!(find_seed(None, None).unwrap(), None);
        assert!(matches!(
            find_seed(Some("ds=nocloud;h=x"), None),
            Err(SeedError::NoUrl { .. })
        ));
        assert!(matches!(
            find_seed(Some("ds=nocloud-net;s=https://h/"), None),
            Err(SeedError::Url { .. })
        ));
    }

    #[test]
    fn parses_meta_data() {
        let md = MetaData::parse(
            b"---\n# made by slipway\ninstance-id: i-123 # trailing comment\r\nlocal-hostname: 'vm1.example.org'\n\
              public-keys:\n  - ssh-ed25519 AAAA x\nnetwork-interfaces: |\n  auto eth0\n",
        )
        .unwrap();
        assert_eq!(md.instance_id, "i-123");
        let h = md.local_hostname.unwrap();
        assert_eq!((h.fqdn(), h.short()), ("vm1.example.org", "vm1"));

        let md = MetaData::parse(b"instance-id: \"iid-\\x41\"\nlocal-hostname:\n").unwrap();
        assert_eq!(
            (md.instance_id.as_str(), md.local_hostname),
            ("iid-A", None)
        );
    }

    #[test]
    fn refuses_bad_meta_data() {
        let long = format!("local-hostname: {}\ninstance-id: i\n", "a".repeat(300));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"local-hostname: h\n", "no instance-id"),
            (b"instance-id: a\ninstance-id: b\n", "twice"),
            (b"instance-id: i\nlocal-hostname: ../x\n", "'/'"),
            (
                b"instance-id: i\nlocal-hostname: \"evil\\nhost\"\n",
                "U+000A",
            ),
            (b"instance-id: i\nlocal-hostname: a\rb\n", "U+000D"),
            (long.as_bytes(), "300 characters"),
            (b"instance-id: i\nlocal-hostname: -a\n", "starts or ends"),
            (b"instance-id: i\nlocal-hostname: a..b\n", "empty label"),
            (b"instance-id: ../../etc\n", "'/'"),
            (b"instance-id: \"a b\"\n", "whitespace"),
            (b"instance-id: |\n  x\n", "block"),
            (b"instance-id: \"open\n", "unterminated"),
            (b"{\"instance-id\": \"x\"}", "JSON"),
            (b"just words\n", "expected `key: value`"),
            (b"instance-id: \xff\n", "UTF-8"),
        ];
        for (input, want) in cases {
            let err = MetaData::parse(input).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rendered_meta_data_round_trips() {
        let md = MetaData {
            instance_id: "i-\"q\"".into(),
            local_hostname: Some(Hostname::parse("vm-7").unwrap()),
        };
        assert_eq!(MetaData::parse(md.to_yaml().as_bytes()).unwrap(), md);
    }
}
