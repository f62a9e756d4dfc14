//! Sizes as requesters write them: `8192` (MiB), `"8GiB"`, `"1.5 GiB"`, `"512M"`. Binary units
//! only: `"8 GB"` is refused with an explanation and the binary size meant, because 8 GB is
//! 7629.4 MiB and silently rounding either way would surprise someone.

use serde_json::Value;

const MIB_PER: [(&str, u64); 4] = [("m", 1), ("g", 1 << 10), ("t", 1 << 20), ("p", 1 << 30)];

/// Why a size was not understood, and the size that was probably meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    pub message: String,
    pub code: &'static str,
    pub suggestion: Option<Value>,
}

/// A size in MiB, from a JSON number (MiB) or string.
pub fn parse(value: &Value) -> Result<u64, SizeError> {
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(mib) => Ok(mib),
            None => {
                let f = n.as_f64().unwrap_or(0.0);
                Err(SizeError {
                    message: format!(
                        "{n} is not a whole number of MiB; write a whole number, or a size such as \"{}\"",
                        format_mib(f.max(1.0).round() as u64)
                    ),
                    code: "not-whole-mib",
                    suggestion: (f >= 1.0).then(|| Value::from(f.round() as u64)),
                })
            }
        },
        Value::String(s) => parse_text(s),
        other => Err(SizeError {
            message: format!(
                "a size is a number of MiB or a string such as \"8GiB\", not {}",
                kind(other)
            ),
            code: "wrong-type",
            suggestion: None,
        }),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_text(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let bad = || SizeError {
        message: format!(
            "{text:?} is not a size: write a number of MiB (8192) or a number with a binary unit (\"8GiB\", \"512MiB\", \"2TiB\")"
        ),
        code: "not-a-size",
        suggestion: None,
    };
    if number.is_empty() || number.len() > 24 || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let amount: f64 = number.parse().map_err(|_| bad())?;
    let lower = unit.to_ascii_lowercase();
    let (binary, prefix) = match lower.as_str() {
        "" => return whole(amount, 1, text),
        "b" => {
            return Err(SizeError {
                message: format!("{text:?} is in bytes; sizes are whole MiB"),
                code: "not-whole-mib",
                suggestion: Some(Value::from(format_mib(
                    ((amount / (1u64 << 20) as f64).ceil() as u64).max(1),
                ))),
            });
        }
        u if u.ends_with("ib") && u.len() == 3 => (true, &u[..1]),
        u if u.ends_with('b') && u.len() == 2 => (false, &u[..1]),
        u if u.len() == 1 => (true, u),
        _ => return Err(bad()),
    };
    let Some(&(_, per)) = MIB_PER.iter().find(|(p, _)| *p == prefix) else {
        if prefix == "k" {
            return Err(SizeError {
                message: format!("{text:?} is smaller than a MiB unit; sizes are whole MiB"),
                code: "not-whole-mib",
                suggestion: None,
            });
        }
        return Err(bad());
    };
    if binary {
        return whole(amount, per, text);
    }
    // Decimal units: explain, and suggest the binary unit the writer most likely meant.
    let bytes = amount
        * 1000f64.powi(MIB_PER.iter().position(|(p, _)| *p == prefix).unwrap_or(0) as i32 + 2);
    let mib = bytes / (1u64 << 20) as f64;
    let meant = format!("{}{}iB", trim_number(number), prefix.to_ascii_uppercase());
    Err(SizeError {
        message: format!(
            "{text:?} is a decimal size ({mib:.1} MiB); Slipway sizes are binary: did you mean {meant:?}?"
        ),
        code: "decimal-unit",
        suggestion: Some(Value::from(meant)),
    })
}

fn trim_number(n: &str) -> &str {
    if n.contains('.') {
        n.trim_end_matches('0').trim_end_matches('.')
    } else {
        n
    }
}

fn whole(amount: f64, per: u64, text: &str) -> Result<u64, SizeError> {
    let mib = amount * per as f64;
    if !mib.is_finite() || mib > u64::MAX as f64 / 2.0 {
        return Err(SizeError {
            message: format!("{text:?} is too large"),
            code: "out-of-range",
            suggestion: None,
        });
    }
    if mib.fract() != 0.0 {
        return Err(SizeError {
            message: format!("{text:?} is not a whole number of MiB"),
            code: "not-whole-mib",
            suggestion: Some(Value::from(format_mib(mib.ceil() as u64))),
        });
    }
    Ok(mib as u64)
}

/// A size as a requester would write it: `8GiB`, `1536MiB`, `2TiB`.
pub fn format_mib(mib: u64) -> String {
    if mib >= 1 << 20 && mib.is_multiple_of(1 << 20) {
        format!("{}TiB", mib >> 20)
    } else if mib >= 1 << 10 && mib.is_multiple_of(1 << 10) {
        format!("{}GiB", mib >> 10)
    } else {
        format!("{mib}MiB")
    }
}

/// The same, spaced for sentences: `8 GiB`.
pub fn say_mib(mib: u64) -> String {
    let s = format_mib(mib);
    let at = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    format!("{} {}", &s[..at], &s[at..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_units_and_plain_numbers() {
        for (v, mib) in [
            (json!(8192), 8192),
            (json!("8GiB"), 8192),
            (json!("8 GiB"), 8192),
            (json!("8gib"), 8192),
            (json!("8G"), 8192),
            (json!("1.5GiB"), 1536),
            (json!("512MiB"), 512),
            (json!("512"), 512),
            (json!("2TiB"), 2 << 20),
        ] {
            assert_eq!(parse(&v), Ok(mib), "{v}");
        }
    }

    #[test]
    fn decimal_units_are_explained_with_the_binary_size_meant() {
        let e = parse(&json!("8 GB")).unwrap_err();
        assert_eq!(e.code, "decimal-unit");
        assert!(e.message.contains("7629.4 MiB"), "{}", e.message);
        assert_eq!(e.suggestion, Some(json!("8GiB")));
        assert_eq!(
            parse(&json!("1.50TB")).unwrap_err().suggestion,
            Some(json!("1.5TiB"))
        );
    }

    #[test]
    fn nonsense_is_refused_without_panic() {
        for v in [
            json!("eight"),
            json!(""),
            json!("8 XB"),
            json!("1.2.3G"),
            json!(-5),
            json!(true),
            json!("99999999999999999999999999TiB"),
            json!("0.3MiB"),
            json!("4KiB"),
            json!(1.5),
        ] {
            assert!(parse(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn sizes_are_formatted_in_the_largest_whole_unit() {
        assert_eq!(format_mib(8192), "8GiB");
        assert_eq!(format_mib(1536), "1536MiB");
        assert_eq!(format_mib(3 << 20), "3TiB");
        assert_eq!(say_mib(98304), "96 GiB");
    }
}
