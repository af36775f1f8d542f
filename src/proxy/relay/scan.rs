//! Finding the lines of a message head. The relay's heads are almost always strictly
//! well-formed — CRLF line ends, a name then `:` — and for those a scan written for that shape
//! finds every line in one pass: header values are checked eight bytes at a time. Head parsing
//! with httparse was a fifth of a keep-alive request's instructions (BENCHMARKS.md, Profile).
//!
//! The scan accepts a subset of what httparse (with the defaults the relay used) accepts, never
//! more: anything else it calls [`Scan::Unusual`], and the head is parsed again with httparse,
//! which decides as before. So the subset is an optimisation, not a second grammar; the test
//! `the_scan_agrees_with_httparse` checks that on generated heads.
//!
//! A line the scan found is kept as byte offsets ([`Field`]) and copied on as it came, CRLF
//! included, so runs of kept lines go out in one copy.

use super::head::MAX_HEADERS;
use std::mem::MaybeUninit;

/// One header line, as offsets into the head's buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Field {
    start: u32,
    colon: u32,
    value: u32,
    value_end: u32,
    /// The end of the line after its CRLF, or 0 when the line is not to be copied as it came
    /// (httparse found it, and its line end may be a bare LF).
    end: u32,
}

impl Field {
    pub fn name<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.colon as usize]
    }

    /// The value without the whitespace around it.
    pub fn value<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.value as usize..self.value_end as usize]
    }
}

/// Header fields of a head, left uninitialised until written.
pub type Slots = [MaybeUninit<Field>; MAX_HEADERS];

pub fn slots() -> Slots {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The fields written so far.
pub fn written(slots: &Slots, n: usize) -> &[Field] {
    let n = n.min(MAX_HEADERS);
    // SAFETY: the first `n` slots were written (by `fields` or `from_httparse`), and `Field`
    // is plain data.
    unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<Field>(), n) }
}

#[derive(Debug, PartialEq)]
pub enum Scan {
    /// The head ends at this offset and has this many fields.
    Complete(usize, usize),
    /// Well-formed so far; more bytes are needed.
    Partial,
    /// Not of the strict shape: parse with httparse.
    Unusual,
}

/// A request line `METHOD SP target SP HTTP/1.1 CRLF` at the start of `buf`: the method's end,
/// the target's range and the line's end.
pub fn request_line(buf: &[u8]) -> Result<(usize, usize, usize, usize), Scan> {
    let mut i = 0;
    while buf.get(i).is_some_and(|b| TOKEN[*b as usize]) {
        i += 1;
    }
    let method_end = i;
    match buf.get(i) {
        None => return Err(Scan::Partial),
        Some(b' ') if i > 0 => i += 1,
        Some(_) => return Err(Scan::Unusual),
    }
    let target = i;
    // Printable ASCII only (httparse also takes bytes above 0x7f).
    loop {
        i = skip_words(buf, i, |w| less_than(w, 0x21) | equal(w, 0x7f) | (w & HIGH));
        match buf.get(i) {
            None => return Err(Scan::Partial),
            Some(0x21..=0x7e) => i += 1,
            Some(b' ') if i > target => break,
            Some(_) => return Err(Scan::Unusual),
        }
    }
    let target_end = i;
    let end = expect(buf, i + 1, b"HTTP/1.1\r\n")?;
    Ok((method_end, target, target_end, end))
}

/// A status line `HTTP/1.1 SP 3DIGIT SP reason CRLF` at the start of `buf` with a printable
/// ASCII reason: the status and the line's end.
pub fn status_line(buf: &[u8]) -> Result<(u16, usize), Scan> {
    let i = expect(buf, 0, b"HTTP/1.1 ")?;
    let digits = match buf.get(i..i + 4) {
        Some(d) => d,
        None if buf.len() > i && !buf[i..].iter().all(u8::is_ascii_digit) => {
            return Err(Scan::Unusual)
        }
        None => return Err(Scan::Partial),
    };
    if !digits[..3].iter().all(u8::is_ascii_digit) || digits[3] != b' ' || digits[0] == b'0' {
        return Err(Scan::Unusual);
    }
    let status = digits[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut i = i + 4;
    loop {
        match buf.get(i) {
            None => return Err(Scan::Partial),
            Some(b'\t' | b' '..=0x7e) => i += 1,
            Some(b'\r') => break,
            Some(_) => return Err(Scan::Unusual),
        }
    }
    Ok((status, expect(buf, i, b"\r\n")?))
}

/// `want` at `buf[at..]`: the offset after it.
fn expect(buf: &[u8], at: usize, want: &[u8]) -> Result<usize, Scan> {
    let have = buf.get(at..).unwrap_or_default();
    let n = have.len().min(want.len());
    if have[..n] != want[..n] {
        Err(Scan::Unusual)
    } else if n < want.len() {
        Err(Scan::Partial)
    } else {
        Ok(at + n)
    }
}

/// The header lines from `buf[at..]` to the empty line that ends the head, into `slots`.
pub fn fields(buf: &[u8], mut at: usize, slots: &mut Slots) -> Scan {
    if buf.len() > u32::MAX as usize {
        return Scan::Unusual;
    }
    let mut n = 0;
    loop {
        match buf.get(at) {
            None => return Scan::Partial,
            Some(b'\r') => {
                return match buf.get(at + 1) {
                    None => Scan::Partial,
                    Some(b'\n') => Scan::Complete(at + 2, n),
                    Some(_) => Scan::Unusual,
                }
            }
            Some(_) if n == MAX_HEADERS => return Scan::Unusual,
            Some(_) => {}
        }
        let start = at;
        while buf.get(at).is_some_and(|b| TOKEN[*b as usize]) {
            at += 1;
        }
        match buf.get(at) {
            None => return Scan::Partial,
            Some(b':') if at > start => {}
            Some(_) => return Scan::Unusual,
        }
        let colon = at;
        at += 1;
        while let Some(b' ' | b'\t') = buf.get(at) {
            at += 1;
        }
        let value = at;
        let cr = match value_end(buf, at) {
            Ok(cr) => cr,
            Err(s) => return s,
        };
        match buf.get(cr + 1) {
            None => return Scan::Partial,
            Some(b'\n') => {}
            Some(_) => return Scan::Unusual,
        }
        let mut value_end = cr;
        while value_end > value && matches!(buf[value_end - 1], b' ' | b'\t') {
            value_end -= 1;
        }
        at = cr + 2;
        slots[n].write(Field {
            start: start as u32,
            colon: colon as u32,
            value: value as u32,
            value_end: value_end as u32,
            end: at as u32,
        });
        n += 1;
    }
}

/// The CR that ends the value starting at `buf[at..]`: the bytes before it are tab, space,
/// printable ASCII or above 0x7f (httparse's value bytes).
fn value_end(buf: &[u8], mut at: usize) -> Result<usize, Scan> {
    loop {
        at = skip_words(buf, at, |w| less_than(w, 0x20) | equal(w, 0x7f));
        match buf.get(at) {
            None => return Err(Scan::Partial),
            Some(b'\r') => return Ok(at),
            Some(b) if VALUE[*b as usize] => at += 1,
            Some(_) => return Err(Scan::Unusual),
        }
    }
}

/// Skips eight bytes at a time from `buf[at..]` while `stop` flags none of them: the offset of
/// the first flagged byte, or of the last fewer than eight, for the caller to check one by one.
fn skip_words(buf: &[u8], mut at: usize, stop: impl Fn(u64) -> u64) -> usize {
    while let Some(chunk) = buf.get(at..at + 8) {
        let flagged = stop(word(chunk));
        if flagged != 0 {
            // The lowest flagged byte is exact (only bytes above it can be false alarms).
            return at + flagged.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at
}

/// The lines httparse found, as fields not to be copied as they came.
pub fn from_httparse(buf: &[u8], headers: &[httparse::Header], slots: &mut Slots) -> usize {
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        (s.as_ptr() as usize)
            .checked_sub(base)
            .filter(|o| o + s.len() <= buf.len())
    };
    let mut n = 0;
    for h in headers.iter().take(MAX_HEADERS) {
        let Some(start) = offset(h.name.as_bytes()) else {
            continue;
        };
        let colon = start + h.name.len();
        // An empty value may not point into the buffer.
        let (value, value_end) = match offset(h.value) {
            Some(v) => (v, v + h.value.len()),
            None => (colon, colon),
        };
        slots[n].write(Field {
            start: start as u32,
            colon: colon as u32,
            value: value as u32,
            value_end: value_end as u32,
            end: 0,
        });
        n += 1;
    }
    n
}

/// Writes kept lines to a head being built: consecutive lines copied as they came go out as
/// one copy.
pub struct Copier {
    from: usize,
    to: usize,
}

impl Copier {
    /// Starts with `buf[..start]` (a start line kept as it came), or nothing.
    pub fn new(start: usize) -> Self {
        Copier { from: 0, to: start }
    }

    pub fn keep(&mut self, out: &mut Vec<u8>, buf: &[u8], f: &Field) {
        if f.end != 0 {
            if f.start as usize != self.to {
                self.flush(out, buf);
                self.from = f.start as usize;
            }
            self.to = f.end as usize;
            return;
        }
        self.flush(out, buf);
        // A line httparse found: `Name:`, the whitespace and the value as they came, when the
        // bytes between are only that.
        let line = &buf[f.start as usize..f.value_end as usize];
        if buf.get(f.colon as usize) == Some(&b':') && f.value >= f.colon {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        } else {
            super::head::push_header(out, f.name(buf), f.value(buf));
        }
    }

    pub fn flush(&mut self, out: &mut Vec<u8>, buf: &[u8]) {
        if self.to > self.from {
            out.extend_from_slice(&buf[self.from..self.to]);
        }
        self.from = self.to;
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().expect("8 bytes"))
}

/// The high bit of each byte of `w` below `n` (n <= 128; exact up to the lowest such byte).
fn less_than(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
}

/// The high bit of each byte of `w` equal to `b` (exact up to the lowest such byte).
fn equal(w: u64, b: u8) -> u64 {
    less_than(w ^ (ONES * u64::from(b)), 1)
}

/// RFC 9110 `tchar`.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
        i += 1;
    }
    t
};

/// Bytes a header value may hold: tab, space, printable ASCII, and obs-text.
static VALUE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i == 9 || (i >= 0x20 && i != 0x7f);
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests;
