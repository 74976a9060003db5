//! Byte counts from Kubernetes quantities (`512Mi`, `2Gi`, `1.5G`, `1e9`).

/// Bytes a quantity stands for, or a message saying why it is not one.
pub fn bytes(q: &str) -> Result<i64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => {
            return Err(format!(
                "{q:?}: unknown unit {suffix:?} (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{q:?} must be a non-negative quantity"));
    }
    let b = (value * multiplier).ceil();
    if b > i64::MAX as f64 {
        return Err(format!("{q:?} is too large"));
    }
    Ok(b as i64)
}

/// A byte count in binary units for people, e.g. `22.4Gi`.
pub fn human(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units_parse() {
        assert_eq!(bytes("2Gi"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(bytes("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(bytes("123"), Ok(123));
    }

    #[test]
    fn nonsense_is_refused_with_the_value_named() {
        assert!(bytes("2GB").expect_err("unit").contains("2GB"));
        assert!(bytes("lots").is_err());
        assert!(bytes("-1Gi").is_err());
    }

    #[test]
    fn human_units_round_to_one_decimal() {
        assert_eq!(human(24 * 1024 * 1024 * 1024), "24.0Gi");
        assert_eq!(human(1536), "1.5Ki");
        assert_eq!(human(10), "10");
    }
}
