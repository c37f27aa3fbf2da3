//! Newline-delimited framing of a child's stdout (T2511 §stdio, item 139), with a size cap.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    Line(Vec<u8>),
    /// A line longer than the cap: the child breaks the framing contract.
    TooLong,
    Eof,
}

/// Reads capped lines. Cancel-safe: the only await is `fill_buf`, and every byte consumed is
/// first moved into `partial`, so a `select!` that drops `next` loses nothing.
pub struct LineReader<R> {
    reader: R,
    partial: Vec<u8>,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            partial: Vec::new(),
            max,
        }
    }

    pub async fn next(&mut self) -> LineEvent {
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(bytes) if !bytes.is_empty() => bytes,
                _ => return LineEvent::Eof,
            };
            match available.iter().position(|byte| *byte == b'\n') {
                Some(end) => {
                    let too_long = self.partial.len() + end > self.max;
                    if !too_long {
                        self.partial
                            .extend_from_slice(available.get(..end).unwrap_or_default());
                    }
                    self.reader.consume(end + 1);
                    if too_long {
                        self.partial.clear();
                        return LineEvent::TooLong;
                    }
                    let mut line = std::mem::take(&mut self.partial);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return LineEvent::Line(line);
                }
                None => {
                    let length = available.len();
                    if self.partial.len() + length > self.max {
                        self.reader.consume(length);
                        self.partial.clear();
                        return LineEvent::TooLong;
                    }
                    self.partial.extend_from_slice(available);
                    self.reader.consume(length);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_caps_them() {
        let input: &[u8] = b"{\"a\":1}\r\nshort\nthis-line-is-far-too-long\nok\n";
        let mut reader = LineReader::new(tokio::io::BufReader::with_capacity(4, input), 10);
        assert_eq!(reader.next().await, LineEvent::Line(b"{\"a\":1}".to_vec()));
        assert_eq!(reader.next().await, LineEvent::Line(b"short".to_vec()));
        assert_eq!(reader.next().await, LineEvent::TooLong);
        // After a TooLong the caller kills the child; the reader itself stays usable.
        let next = reader.next().await;
        assert!(matches!(next, LineEvent::Line(_) | LineEvent::TooLong));
    }

    #[tokio::test]
    async fn eof_ends_the_stream() {
        let input: &[u8] = b"x\n";
        let mut reader = LineReader::new(tokio::io::BufReader::new(input), 10);
        assert_eq!(reader.next().await, LineEvent::Line(b"x".to_vec()));
        assert_eq!(reader.next().await, LineEvent::Eof);
    }
}
