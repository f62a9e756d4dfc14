//! Line-based edits of configuration files, as pure functions of their bytes.
//!
//! Each edit keeps every line it does not mean to change byte for byte (comments, spacing, odd
//! encodings), so that a staged image differs from its model only where identity lived. Each
//! returns `None` when the file needs no change, so that an untouched file is not rewritten.

/// What an edit made of a file.
#[derive(Debug, Default)]
pub struct Edit {
    /// The new content, or `None` if the file stays as it is.
    pub content: Option<Vec<u8>>,
    /// Things the operator should know about the result.
    pub notes: Vec<String>,
}

impl Edit {
    fn from_lines(original: &[u8], kept: Vec<&[u8]>) -> Self {
        let content: Vec<u8> = kept.concat();
        Self {
            content: (content != original).then_some(content),
            notes: Vec::new(),
        }
    }
}

/// The file's lines, each with its line ending.
fn lines(text: &[u8]) -> Vec<&[u8]> {
    text.split_inclusive(|&b| b == b'\n').collect()
}

/// `KEY=` at the start of a shell-style assignment, ignoring leading blanks.
fn assigns(line: &[u8], key: &[u8]) -> bool {
    let line = line.trim_ascii_start();
    line.len() > key.len() && line.starts_with(key) && line[key.len()] == b'='
}

/// Drops the shell-style assignments of `keys` (`HWADDR=...`).
pub fn drop_assignments(text: &[u8], keys: &[&str]) -> Edit {
    let kept = lines(text)
        .into_iter()
        .filter(|l| !keys.iter().any(|k| assigns(l, k.as_bytes())))
        .collect();
    Edit::from_lines(text, kept)
}

/// An ifcfg file: `HWADDR=` pins the profile to one card and `MACADDR=` gives the card a fixed
/// address; both would carry the model's MACs into every VM. `UUID=` names the profile, not the
/// machine, and stays.
pub fn ifcfg(text: &[u8]) -> Edit {
    drop_assignments(text, &["HWADDR", "MACADDR"])
}

/// `[name]` if the line is an INI section header.
fn section(line: &[u8]) -> Option<&[u8]> {
    let t = line.trim_ascii();
    (t.len() >= 2 && t[0] == b'[' && t[t.len() - 1] == b']').then(|| t[1..t.len() - 1].trim_ascii())
}

/// The key of an INI `key=value` line (blanks around the key ignored), unless it is a comment.
fn ini_key(line: &[u8]) -> Option<&[u8]> {
    let t = line.trim_ascii_start();
    if t.starts_with(b"#") || t.starts_with(b";") {
        return None;
    }
    let eq = t.iter().position(|&b| b == b'=')?;
    Some(t[..eq].trim_ascii())
}

/// Drops the INI keys for which `drop(section, key)` holds; returns the kept lines and, per
/// section instance, whether it lost a key and how many keys it kept.
fn ini_filter<'a>(
    text: &'a [u8],
    drop: impl Fn(&[u8], &[u8]) -> bool,
) -> (Vec<&'a [u8]>, Vec<SectionCount<'a>>) {
    let mut kept = Vec::new();
    let mut sections: Vec<SectionCount<'a>> = Vec::new();
    for line in lines(text) {
        if let Some(name) = section(line) {
            sections.push(SectionCount {
                name,
                dropped: 0,
                kept: 0,
            });
            kept.push(line);
            continue;
        }
        let current = sections.last().map_or(&b""[..], |s| s.name);
        match ini_key(line) {
            Some(key) if drop(current, key) => {
                if let Some(s) = sections.last_mut() {
                    s.dropped += 1;
                }
            }
            Some(_) => {
                if let Some(s) = sections.last_mut() {
                    s.kept += 1;
                }
                kept.push(line);
            }
            None => kept.push(line),
        }
    }
    (kept, sections)
}

struct SectionCount<'a> {
    name: &'a [u8],
    dropped: usize,
    kept: usize,
}

/// A NetworkManager keyfile: `mac-address=` binds the profile to the model's card and
/// `cloned-mac-address=` sets a fixed address; both go. The profile's `uuid=` stays: it names the
/// profile, and other profiles may refer to it (`master=`).
pub fn nm_keyfile(text: &[u8]) -> Edit {
    const SECTIONS: &[&[u8]] = &[b"ethernet", b"802-3-ethernet", b"wifi", b"802-11-wireless"];
    let (kept, _) = ini_filter(text, |section, key| {
        SECTIONS.contains(&section) && (key == b"mac-address" || key == b"cloned-mac-address")
    });
    Edit::from_lines(text, kept)
}

/// A systemd-networkd `.link`, `.network` or `.netdev` file: `MACAddress=` (and
/// `PermanentMACAddress=`) under `[Match]` pins it to the model's card; `MACAddress=` under
/// `[Link]` or `[NetDev]` gives a card or virtual device a fixed address. All go. A `[Match]`
/// left with no condition makes systemd ignore the file, which is what the pinned file already
/// amounted to on a VM with new MACs; the note says so, since the operator may want a name match.
pub fn networkd(text: &[u8]) -> Edit {
    let (kept, sections) = ini_filter(text, |section, key| match section {
        b"Match" => key == b"MACAddress" || key == b"PermanentMACAddress",
        b"Link" | b"NetDev" => key == b"MACAddress",
        _ => false,
    });
    let mut edit = Edit::from_lines(text, kept);
    if sections
        .iter()
        .any(|s| s.name == b"Match" && s.dropped > 0 && s.kept == 0)
    {
        edit.notes.push(
            "its [Match] matched only on a MAC address and is now empty, so systemd ignores \
             the file; match the interface by name (Name=) if it should apply"
                .into(),
        );
    }
    edit
}

/// /etc/hosts: the model's own names go — its host name and any name under it
/// (`model.example.com` for `model`). Debian maps the machine's name to 127.0.1.1 on a line of
/// its own, which is dropped whole; elsewhere (`127.0.0.1 localhost model`) only the model's
/// names are removed, and a line left with no name is dropped. `localhost` lines stay.
/// `old_names` are the model's host names, lower-case; empty if unknown.
pub fn hosts(text: &[u8], old_names: &[String]) -> Edit {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in lines(text) {
        if let Some(new) = hosts_line(line, old_names) {
            out.push(new);
        }
    }
    let content: Vec<u8> = out.concat();
    Edit {
        content: (content != text).then_some(content),
        notes: Vec::new(),
    }
}

/// The line as it should stay, or `None` to drop it.
fn hosts_line(line: &[u8], old_names: &[String]) -> Option<Vec<u8>> {
    let (body, comment) = match line.iter().position(|&b| b == b'#') {
        Some(i) => line.split_at(i),
        None => (line, &b""[..]),
    };
    let mut fields = body
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let Some(address) = fields.next() else {
        return Some(line.to_vec());
    };
    let names: Vec<&[u8]> = fields.collect();
    let is_old = |n: &&[u8]| old_names.iter().any(|o| names_host(n, o.as_bytes()));
    if address == b"127.0.1.1" && (old_names.is_empty() || names.iter().any(is_old)) {
        return None;
    }
    let kept: Vec<&[u8]> = names.iter().copied().filter(|n| !is_old(n)).collect();
    if kept.len() == names.len() {
        return Some(line.to_vec());
    }
    if kept.is_empty() {
        return None;
    }
    let mut new = address.to_vec();
    new.push(b'\t');
    new.extend(kept.join(&b' '));
    let comment = comment.trim_ascii_end();
    if !comment.is_empty() {
        new.push(b' ');
        new.extend(comment);
    }
    if line.ends_with(b"\n") {
        new.push(b'\n');
    }
    Some(new)
}

/// Whether `name` is `host` or one of its fully qualified names (`host.example.com`).
fn names_host(name: &[u8], host: &[u8]) -> bool {
    name.eq_ignore_ascii_case(host)
        || (name.len() > host.len()
            && name[host.len()] == b'.'
            && name[..host.len()].eq_ignore_ascii_case(host))
}

/// One line of a YAML file as the netplan edit sees it.
struct YamlLine<'a> {
    raw: &'a [u8],
    /// Leading spaces.
    indent: usize,
    /// The line without indentation, trailing comment or trailing blanks; empty for blank and
    /// comment lines.
    body: &'a [u8],
    /// A tab in the indentation, which YAML forbids and this edit does not guess about.
    tabbed: bool,
}

impl<'a> YamlLine<'a> {
    fn new(raw: &'a [u8]) -> Self {
        let indent = raw.iter().take_while(|&&b| b == b' ').count();
        let rest = &raw[indent..];
        let tabbed = rest.first() == Some(&b'\t');
        let body = strip_yaml_comment(rest.trim_ascii_start()).trim_ascii_end();
        Self {
            raw,
            indent,
            body,
            tabbed,
        }
    }

    fn content(&self) -> bool {
        !self.body.is_empty()
    }

    /// The key of a `key: value` or `key:` line.
    fn key(&self) -> Option<&'a [u8]> {
        let colon = self.body.iter().position(|&b| b == b':')?;
        let after = self.body.get(colon + 1);
        if !matches!(after, None | Some(b' ')) {
            return None;
        }
        let key = self.body[..colon].trim_ascii();
        let key = unquote_yaml(key);
        (!key.is_empty() && !key.contains(&b' ')).then_some(key)
    }

    /// What follows `key:` on the line.
    fn value(&self) -> &'a [u8] {
        match self.body.iter().position(|&b| b == b':') {
            Some(colon) => self.body[colon + 1..].trim_ascii(),
            None => b"",
        }
    }
}

fn unquote_yaml(key: &[u8]) -> &[u8] {
    let quoted =
        key.len() >= 2 && (key[0] == b'"' || key[0] == b'\'') && key[key.len() - 1] == key[0];
    if quoted { &key[1..key.len() - 1] } else { key }
}

/// The line up to a `#` that starts a comment (at the start or after a blank, outside quotes).
fn strip_yaml_comment(line: &[u8]) -> &[u8] {
    let mut quote = None;
    for (i, &b) in line.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'#' && (i == 0 || line[i - 1].is_ascii_whitespace()) => {
                return &line[..i];
            }
            None => {}
        }
    }
    line
}

/// A netplan file. `match: {macaddress: ...}` binds a device to the model's card: a `match:`
/// whose only condition is the MAC is removed, together with the device's `set-name:` (netplan
/// refuses `set-name:` without `match:`, and the device's own name then names the interface);
/// a `match:` with other conditions loses only its `macaddress:`. A `macaddress:` elsewhere sets
/// a fixed address and is removed. The edit works on lines and indentation, not on a parsed
/// document, so that comments and layout survive; anything it cannot read with certainty — a
/// tab in the indentation, a MAC inside a flow mapping it does not recognise — is an error
/// rather than a guess.
pub fn netplan(text: &[u8]) -> Result<Edit, String> {
    let ls: Vec<YamlLine> = lines(text).into_iter().map(YamlLine::new).collect();
    let mentions_mac = |l: &YamlLine| contains(l.body, b"macaddress");
    if !ls.iter().any(mentions_mac) {
        return Ok(Edit::default());
    }
    if let Some(i) = ls.iter().position(|l| l.tabbed) {
        return Err(format!(
            "line {}: a tab in the indentation; refusing to edit this file",
            i + 1
        ));
    }
    let mut drop = vec![false; ls.len()];
    for i in 0..ls.len() {
        if ls[i].key() == Some(b"match") && !drop[i] {
            edit_match(&ls, i, &mut drop)?;
        }
    }
    // A `macaddress:` outside `match:` sets the device's address.
    for i in 0..ls.len() {
        if !drop[i] && ls[i].key() == Some(b"macaddress") {
            drop_block(&ls, i, &mut drop);
        }
    }
    if let Some(i) = (0..ls.len()).find(|&i| !drop[i] && mentions_mac(&ls[i])) {
        return Err(format!(
            "line {}: a MAC address in a form this plugin does not edit; remove it from the \
             model, or write it as a block `macaddress:` key",
            i + 1
        ));
    }
    let kept = ls
        .iter()
        .zip(&drop)
        .filter(|(_, d)| !**d)
        .map(|(l, _)| l.raw)
        .collect();
    Ok(Edit::from_lines(text, kept))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Handles the `match:` at line `i`.
fn edit_match(ls: &[YamlLine], i: usize, drop: &mut [bool]) -> Result<(), String> {
    let value = ls[i].value();
    if !value.is_empty() {
        if is_flow_mac_only(value) {
            drop[i] = true;
            drop_sibling(ls, i, b"set-name", drop);
        }
        // Any other inline form that names a MAC is caught by the final check.
        return Ok(());
    }
    let end = block_end(ls, i);
    let Some(child_indent) = (i + 1..end)
        .find(|&j| ls[j].content())
        .map(|j| ls[j].indent)
    else {
        return Ok(());
    };
    let children: Vec<usize> = (i + 1..end)
        .filter(|&j| ls[j].content() && ls[j].indent == child_indent)
        .collect();
    if children.iter().all(|&j| ls[j].key() == Some(b"macaddress")) {
        drop[i..end].iter_mut().for_each(|d| *d = true);
        drop_sibling(ls, i, b"set-name", drop);
    } else {
        for j in children {
            if ls[j].key() == Some(b"macaddress") {
                drop_block(ls, j, drop);
            }
        }
    }
    Ok(())
}

/// `{macaddress: "52:54:00:12:34:56"}`: a flow mapping with the MAC as its only key.
fn is_flow_mac_only(value: &[u8]) -> bool {
    let Some(inner) = value.strip_prefix(b"{").and_then(|v| v.strip_suffix(b"}")) else {
        return false;
    };
    let inner = inner.trim_ascii();
    !contains(inner, b",")
        && YamlLine {
            raw: inner,
            indent: 0,
            body: inner,
            tabbed: false,
        }
        .key()
            == Some(b"macaddress")
}

/// One past the last line nested under line `i` (blank and comment lines after it excluded).
fn block_end(ls: &[YamlLine], i: usize) -> usize {
    let mut last = i;
    for (j, l) in ls.iter().enumerate().skip(i + 1) {
        if !l.content() {
            continue;
        }
        if l.indent <= ls[i].indent {
            break;
        }
        last = j;
    }
    last + 1
}

/// Marks line `i` and everything nested under it.
fn drop_block(ls: &[YamlLine], i: usize, drop: &mut [bool]) {
    let end = block_end(ls, i);
    drop[i..end].iter_mut().for_each(|d| *d = true);
}

/// Marks the sibling of line `i` (same mapping, same indentation) whose key is `key`.
fn drop_sibling(ls: &[YamlLine], i: usize, key: &[u8], drop: &mut [bool]) {
    let indent = ls[i].indent;
    let is_sibling = |j: usize| ls[j].indent == indent && ls[j].key() == Some(key);
    for j in (0..i).rev() {
        if ls[j].content() && ls[j].indent < indent {
            break;
        }
        if ls[j].content() && is_sibling(j) {
            drop_block(ls, j, drop);
        }
    }
    for j in block_end(ls, i)..ls.len() {
        if ls[j].content() && ls[j].indent < indent {
            break;
        }
        if ls[j].content() && is_sibling(j) {
            drop_block(ls, j, drop);
        }
    }
}
