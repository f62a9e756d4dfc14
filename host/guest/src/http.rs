//! A small blocking HTTP/1.1 client: one request per connection, plain TCP, bounded in time and
//! size. Enough for a NoCloud seed on the hypervisor's network, and small enough for a static
//! binary put into every guest.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::seed::SeedUrl;

/// Response headers are bounded like bodies: a seed server sends a handful.
const MAX_HEADERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per address tried.
    pub connect: Duration,
    /// The whole exchange, connecting included.
    pub total: Duration,
    /// The largest body accepted.
    pub max_body: usize,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("response body larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl HttpError {
    /// Whether trying again may help: the network or the server may simply not be up yet. A
    /// response that is malformed or too large will be the same next time.
    pub fn is_transient(&self) -> bool {
        !matches!(self, HttpError::Malformed(_) | HttpError::TooLarge { .. })
    }
}

/// `GET` (no body) or `POST` (a JSON body) one file of the seed.
pub fn request(
    url: &SeedUrl,
    name: &str,
    post_json: Option<&[u8]>,
    limits: Limits,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + limits.total;
    let stream = connect(url, limits.connect, deadline, limits.total)?;
    let mut stream = Deadlined {
        stream,
        deadline,
        total: limits.total,
    };
    let method = if post_json.is_some() { "POST" } else { "GET" };
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: slipway-firstboot/{}\r\nAccept: */*\r\nConnection: close\r\n",
        url.path_of(name),
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(body) = post_json {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(post_json.unwrap_or_default());
    stream.write_all(&message).map_err(|e| stream.error(e))?;
    stream.flush().map_err(|e| stream.error(e))?;
    let total = stream.total;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, limits.max_body).map_err(|e| match e {
        HttpError::Io(io) if is_timeout(&io) => HttpError::Timeout(total),
        e => e,
    })
}

fn connect(
    url: &SeedUrl,
    per_addr: Duration,
    deadline: Instant,
    total: Duration,
) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = (url.host(), url.port())
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            host: url.host().to_owned(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(total));
        }
        match TcpStream::connect_timeout(&addr, per_addr.min(left)) {
            Ok(s) => return Ok(s),
            Err(source) => {
                last = Some(HttpError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| HttpError::Resolve {
        host: url.host().to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    }))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A stream whose every read and write waits at most until one deadline for the whole exchange,
/// so that a server trickling bytes cannot hold the agent past it.
struct Deadlined {
    stream: TcpStream,
    deadline: Instant,
    total: Duration,
}

impl Deadlined {
    fn arm(&self, write: bool) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        if write {
            self.stream.set_write_timeout(Some(left))
        } else {
            self.stream.set_read_timeout(Some(left))
        }
    }

    fn error(&self, e: io::Error) -> HttpError {
        if is_timeout(&e) {
            HttpError::Timeout(self.total)
        } else {
            HttpError::Io(e)
        }
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(false)?;
        self.stream.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(true)?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Reads one response: status line, headers, and a body framed by `Content-Length`, chunked
/// transfer coding, or the end of the connection.
pub fn read_response<R: BufRead>(r: &mut R, max_body: usize) -> Result<Response, HttpError> {
    let mut header_budget = MAX_HEADERS;
    loop {
        let status_line = read_line(r, &mut header_budget)?;
        let mut words = status_line.split_ascii_whitespace();
        let version = words.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed(format!(
                "status line {:?} is not HTTP/1.x",
                clip(&status_line)
            )));
        }
        let status = words
            .next()
            .filter(|c| c.len() == 3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| {
                HttpError::Malformed(format!("no status code in {:?}", clip(&status_line)))
            })?;

        let mut length: Option<u64> = None;
        let mut chunked = false;
        loop {
            let line = read_line(r, &mut header_budget)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                HttpError::Malformed(format!("header line {:?} has no ':'", clip(&line)))
            })?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = value.parse::<u64>().map_err(|_| {
                    HttpError::Malformed(format!("Content-Length {value:?} is not a number"))
                })?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Malformed(
                        "conflicting Content-Length headers".into(),
                    ));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        // An interim response (100 Continue and the like) is followed by the real one.
        if (100..200).contains(&status) {
            continue;
        }
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(r, max_body, &mut header_budget)?
        } else if let Some(n) = length {
            if n > max_body as u64 {
                return Err(HttpError::TooLarge { limit: max_body });
            }
            let mut body = vec![0; n as usize];
            r.read_exact(&mut body)
                .map_err(|e| eof_is_malformed(e, "the body ended early"))?;
            body
        } else {
            let mut body = Vec::new();
            Read::take(&mut *r, max_body as u64 + 1)
                .read_to_end(&mut body)
                .map_err(HttpError::Io)?;
            if body.len() > max_body {
                return Err(HttpError::TooLarge { limit: max_body });
            }
            body
        };
        return Ok(Response { status, body });
    }
}

fn read_chunked<R: BufRead>(
    r: &mut R,
    max_body: usize,
    budget: &mut usize,
) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, budget)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| {
            HttpError::Malformed(format!("chunk size {:?} is not hexadecimal", clip(size)))
        })?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r, budget)?.is_empty() {}
            return Ok(body);
        }
        if size > max_body - body.len() {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])
            .map_err(|e| eof_is_malformed(e, "a chunk ended early"))?;
        if !read_line(r, budget)?.is_empty() {
            return Err(HttpError::Malformed(
                "a chunk is not followed by CRLF".into(),
            ));
        }
    }
}

fn eof_is_malformed(e: io::Error, what: &str) -> HttpError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        HttpError::Malformed(what.into())
    } else {
        HttpError::Io(e)
    }
}

/// One CRLF- (or LF-) terminated line, counted against the header budget.
fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let n = Read::take(&mut *r, *budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(HttpError::Io)?;
    if n > *budget {
        return Err(HttpError::Malformed(format!(
            "response headers longer than {MAX_HEADERS} bytes"
        )));
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(HttpError::Malformed(
            "the connection closed in the middle of the headers".into(),
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], max: usize) -> Result<Response, HttpError> {
        read_response(&mut &raw[..], max)
    }

    #[test]
    fn framings() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello-extra",
            100,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n", 100).unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse(b"HTTP/1.0 404 Not Found\n\nuntil eof", 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"until eof"[..]));
        let r = parse(b"HTTP/1.1 204 No Content\r\n\r\n", 100).unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], &str)] = &[
            (b"SSH-2.0-OpenSSH\r\n", "not HTTP/1.x"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "no status code"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
                "larger than 10",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab",
                "ended early",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "conflicting",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n0123456789abc", "larger than 10"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n",
                "larger than 10",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "not hexadecimal",
            ),
            (b"HTTP/1.1 200 OK\r\nX-No-End", "middle of the headers"),
            (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", "no ':'"),
        ];
        for (raw, want) in cases {
            let e = parse(raw, 10).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(raw));
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b"X-A: b\r\n".as_slice(), 4000).flatten());
        assert!(
            parse(&huge, 10)
                .unwrap_err()
                .to_string()
                .contains("headers longer")
        );
    }
}
