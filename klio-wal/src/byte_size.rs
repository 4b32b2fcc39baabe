//! Byte counts for people: `1023 B`, `1.5 KiB`, `23.0 MiB`, `1.5 GiB` (binary units, one
//! decimal). The one formatter every Klio message, report and progress line uses.

use std::fmt;

/// A byte count that displays for people (see the [module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        let mut value = n as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn binary_units_with_one_decimal() {
        for (n, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (23 << 20, "23.0 MiB"),
            (3 << 29, "1.5 GiB"),
        ] {
            assert_eq!(ByteSize(n).to_string(), text);
        }
    }
}
