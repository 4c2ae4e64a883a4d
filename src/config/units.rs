//! Human units in config values: durations like `"500ms"`, `"40s"`, `"2m"` and sizes like `"50MB"`, `"1MiB"`.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a number with a unit (`ms`, `s`, `m`, `h`), or a bare integer number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Secs(pub Duration);

/// A byte size written as a number with a unit (`B`, `KB`, `MB`, `GB` are powers of 1000; `KiB`, `MiB`, `GiB` of
/// 1024, as supervisord reads `50MB` as 50·1024·1024 we follow it: `KB`/`MB`/`GB` are also 1024-based), or an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

/// A percentage such as `"50%"` (or a bare number), of one CPU for `cpu_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Percent(pub u32);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage like \"50%\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                let digits = v.trim().trim_end_matches('%').trim();
                match digits.parse::<u32>() {
                    Ok(p) if p >= 1 => Ok(Percent(p)),
                    _ => Err(E::custom(format!(
                        "invalid percentage {v:?}: expected a whole number of percent from 1, like \"50%\""
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// An octal file mode such as `"0755"` (at most `0o7777`), parsed once when the config is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mode(pub u32);

/// The longest duration a config may give, in seconds: a year. Longer ones are typos, and near the top of
/// `u64` seconds `Instant + duration` overflows, a panic in the supervisor.
const MAX_DURATION_SECS: u64 = 365 * 86400;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: expected a number and a unit, like \"500ms\" or \"40s\""
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: {number:?} is not a number"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > MAX_DURATION_SECS as f64 {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    // Whole milliseconds, the precision `Secs` is written back with: the proxy gets its durations as
    // text, and "0.5ms" used to arrive there as "0s" (found while writing the config fuzz target's
    // JSON round-trip check).
    Ok(Duration::from_millis((seconds * 1000.0).round() as u64))
}

/// A bare integer duration, in seconds, held to the same limit as the written form: without it
/// `ready_timeout = 9223372036854775807` passed the checker and overflowed `Instant` in a rollout
/// (found while writing the config fuzz target's duration check).
fn whole_seconds(v: u64) -> Result<Secs, String> {
    if v > MAX_DURATION_SECS {
        return Err(format!("invalid duration {v}: out of range"));
    }
    Ok(Secs::from_secs(v))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number and a unit, like \"50MB\""
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: {number:?} is not a number"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KB, MB or GB)"
            ))
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("invalid size {text:?}: out of range"))
}

impl Secs {
    pub fn from_secs(s: u64) -> Secs {
        Secs(Duration::from_secs(s))
    }
    pub fn from_millis(ms: u64) -> Secs {
        Secs(Duration::from_millis(ms))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Secs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like \"500ms\" or \"40s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secs, E> {
                parse_duration(v).map(Secs).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secs, E> {
                let v = u64::try_from(v).map_err(|_| {
                    E::custom(format!("invalid duration {v}: must not be negative"))
                })?;
                whole_seconds(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secs, E> {
                whole_seconds(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b % (1 << 30) == 0 {
            write!(f, "{}GB", b >> 30)
        } else if b != 0 && b % (1 << 20) == 0 {
            write!(f, "{}MB", b >> 20)
        } else if b != 0 && b % (1 << 10) == 0 {
            write!(f, "{}KB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"50MB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                parse_size(v).map(Bytes).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        super::values::parse_octal(&text, 0o7777)
            .map(Mode)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("40s").unwrap(), Duration::from_secs(40));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("8761h").is_err());
    }

    /// fuzz/regressions/config/integer-duration-beyond-a-year and
    /// sub-millisecond-duration-lost-on-the-way-to-the-proxy.
    #[test]
    fn durations_stay_within_a_year_and_survive_being_written_back() {
        let secs = |toml: &str| -> Result<Secs, String> {
            #[derive(Deserialize)]
            struct T {
                d: Secs,
            }
            toml::from_str::<T>(toml)
                .map(|t| t.d)
                .map_err(|e| e.to_string())
        };
        assert_eq!(secs("d = 31536000"), Ok(Secs::from_secs(31_536_000)));
        for too_long in ["d = 31536001", "d = 9223372036854775807"] {
            let err = secs(too_long).unwrap_err();
            assert!(err.contains("out of range"), "{too_long}: {err}");
        }
        assert!(secs("d = -1").is_err());
        for text in [
            "0.5ms", "1.0005s", "0.1s", "1.5s", "2.5m", "250ms", "1h", "0s",
        ] {
            let d = Secs(parse_duration(text).unwrap());
            assert_eq!(
                d.0.subsec_nanos() % 1_000_000,
                0,
                "{text}: whole milliseconds"
            );
            assert_eq!(
                Secs(parse_duration(&d.to_string()).unwrap()),
                d,
                "{text} -> {d}"
            );
        }
        assert_eq!(parse_duration("0.5ms").unwrap(), Duration::from_millis(1));
        assert_eq!(
            parse_duration("1.0005s").unwrap(),
            Duration::from_millis(1001)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MB").unwrap(), 50 << 20);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("12XB").is_err());
    }
}
