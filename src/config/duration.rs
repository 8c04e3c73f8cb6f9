//! Durations written as "5s", "250ms", "2m", "1h" (or a bare number of seconds) in proxy.toml.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A configuration duration; zero means "disabled" wherever a timeout can be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// The timeout if set, `None` when zero (disabled).
    pub fn enabled(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
    /// Parses "5s", "250ms", "2m", "1h", "1d" or a bare number of seconds.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 =
            num.parse().map_err(|_| format!("invalid duration {s:?} (want e.g. \"5s\", \"250ms\", \"2m\")"))?;
        let ms = match unit.trim() {
            "" | "s" | "sec" => n * 1e3,
            "ms" => n,
            "m" | "min" => n * 60e3,
            "h" => n * 3600e3,
            "d" => n * 86_400e3,
            "us" => n / 1e3,
            other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
        };
        if !ms.is_finite() || ms < 0.0 {
            return Err(format!("invalid duration {s:?}"));
        }
        Ok(Dur(Duration::from_micros((ms * 1e3) as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v).map(Dur::secs).map_err(|_| E::custom("negative duration"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur::secs(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Dur::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Dur::parse("5s").unwrap(), Dur::secs(5));
        assert_eq!(Dur::parse("250ms").unwrap(), Dur::millis(250));
        assert_eq!(Dur::parse("2m").unwrap(), Dur::secs(120));
        assert_eq!(Dur::parse("1.5").unwrap(), Dur::millis(1500));
        assert!(Dur::parse("5 parsecs").is_err());
        assert_eq!(Dur::secs(5).to_string(), "5s");
        assert_eq!(Dur::millis(1500).to_string(), "1500ms");
    }
}
