//! Where a relayed response body ends: a byte count, the chunked coding (scanned as it passes,
//! forwarded unchanged), or the backend's close.

use super::head::Framing;
use bytes::{Buf, Bytes, BytesMut};

/// Progress through one response body.
pub enum Progress {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Position in the chunked coding (RFC 9112 §7.1).
#[derive(Clone, Copy)]
pub enum Chunk {
    /// Hex digits of a chunk size; `digits` counts them.
    Size {
        size: u64,
        digits: u8,
    },
    /// A chunk extension, up to the end of the line.
    Ext {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section; `line` counts the bytes of the current line.
    Trailer {
        line: u32,
    },
}

impl Progress {
    pub fn new(f: Framing) -> Progress {
        match f {
            Framing::None | Framing::Length(0) => Progress::Done,
            Framing::Length(n) => Progress::Length(n),
            Framing::Chunked => Progress::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilClose => Progress::UntilClose,
        }
    }

    pub fn done(&self) -> bool {
        matches!(self, Progress::Done)
    }

    /// Takes the body bytes at the start of `data`: returns how many belong to this body (the
    /// rest would be bytes the backend sent beyond it). Err: malformed chunked coding.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ()> {
        match self {
            Progress::Done => Ok(0),
            Progress::UntilClose => Ok(data.len()),
            Progress::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Progress::Done;
                }
                Ok(n as usize)
            }
            Progress::Chunked(c) => {
                let (n, end) = scan(c, data)?;
                if end {
                    *self = Progress::Done;
                }
                Ok(n)
            }
        }
    }
}

impl Progress {
    /// Takes the next piece of body data from the front of `buf`, consuming the framing on the
    /// way (chunk sizes, extensions, CRLFs, trailers): the decoded body, for a client that is not
    /// HTTP/1. `None` when `buf` holds no more data; once the body has ended ([`Progress::done`])
    /// whatever is left in `buf` lies beyond it. Err: malformed chunked coding.
    pub fn take_data(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ()> {
        while !buf.is_empty() {
            let n = match self {
                Progress::Done => return Ok(None),
                Progress::Length(_) | Progress::UntilClose => self.feed(buf)?,
                Progress::Chunked(Chunk::Data(left)) => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    self.feed(&buf[..n])?
                }
                Progress::Chunked(_) => {
                    // Framing: one byte at a time through the same state machine.
                    let n = self.feed(&buf[..1])?;
                    buf.advance(n);
                    continue;
                }
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            buf.advance(n);
            return Ok(Some(data));
        }
        Ok(None)
    }
}

/// Advances the chunked state over `data`; returns bytes consumed and whether the body ended.
fn scan(c: &mut Chunk, data: &[u8]) -> Result<(usize, bool), ()> {
    let mut i = 0;
    while i < data.len() {
        if let Chunk::Data(left) = c {
            let n = (*left).min((data.len() - i) as u64);
            *left -= n;
            i += n as usize;
            if *left == 0 {
                *c = Chunk::DataCr;
            }
            continue;
        }
        let b = data[i];
        i += 1;
        *c = match *c {
            Chunk::Size { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return Err(());
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        size: size * 16 + d,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(()),
                b';' | b' ' | b'\t' => Chunk::Ext { size },
                b'\r' => Chunk::SizeLf { size },
                _ => return Err(()),
            },
            Chunk::Ext { size } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => return Err(()),
                _ => Chunk::Ext { size },
            },
            Chunk::SizeLf { size } => match b {
                b'\n' if size == 0 => Chunk::Trailer { line: 0 },
                b'\n' => Chunk::Data(size),
                _ => return Err(()),
            },
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size { size: 0, digits: 0 },
            Chunk::DataCr | Chunk::DataLf => return Err(()),
            Chunk::Trailer { line } => match b {
                b'\n' if line == 0 => return Ok((i, true)),
                b'\n' => Chunk::Trailer { line: 0 },
                b'\r' => Chunk::Trailer { line },
                _ if line > 64 * 1024 => return Err(()),
                _ => Chunk::Trailer { line: line + 1 },
            },
            Chunk::Data(_) => unreachable!("handled above"),
        };
    }
    Ok((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&[u8]]) -> Result<(usize, bool), ()> {
        let mut p = Progress::new(Framing::Chunked);
        let mut total = 0;
        for part in parts {
            total += p.feed(part)?;
            if p.done() {
                return Ok((total, true));
            }
        }
        Ok((total, false))
    }

    #[test]
    fn chunked_end_is_found_across_any_split() {
        let body: &[u8] =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(run(&[a, b]), Ok((body.len(), true)), "split at {cut}");
        }
        // Bytes after the end are not the body's.
        let mut more = body.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(run(&[&more]), Ok((body.len(), true)));
        assert_eq!(run(&[b"0\r\n\r\n"]), Ok((5, true)));
        assert_eq!(run(&[b"5\r\nhel"]), Ok((6, false)));
    }

    #[test]
    fn malformed_chunked_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\n",
            b"ffffffffffffffff1\r\n",
        ] {
            assert_eq!(run(&[bad]), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn length_stops_at_the_count() {
        let mut p = Progress::new(Framing::Length(5));
        assert_eq!(p.feed(b"abc"), Ok(3));
        assert_eq!(p.feed(b"defg"), Ok(2));
        assert!(p.done());
    }

    /// Decoding for HTTP/2 clients: whatever the read boundaries, the data comes out whole and
    /// in order, the framing does not, and bytes past the end stay in the buffer.
    #[test]
    fn take_data_decodes_chunked_across_any_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut p = Progress::new(Framing::Chunked);
            let (mut buf, mut data) = (BytesMut::new(), Vec::new());
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                while let Some(d) = p.take_data(&mut buf).unwrap() {
                    data.extend_from_slice(&d);
                }
            }
            assert_eq!(data, b"hello world", "split at {split}");
            assert!(p.done(), "split at {split}");
            assert_eq!(&buf[..], b"NEXT", "split at {split}");
        }
        let mut p = Progress::new(Framing::Chunked);
        assert_eq!(
            p.take_data(&mut BytesMut::from(&b"5\r\nhelloXX"[..])),
            Ok(Some(Bytes::from("hello")))
        );
        assert_eq!(p.take_data(&mut BytesMut::from(&b"XX"[..])), Err(()));
    }
}
