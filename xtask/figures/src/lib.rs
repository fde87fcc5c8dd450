//! How benchmark figures are printed, shared by the benchmarks' own tables
//! and BENCHMARKS.md (rendered by `cargo xtask bench`).

/// A figure as printed: whole numbers with thousands separators from 1,000
/// up, fewer decimals the larger it is; "-" when not a number.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let abs = x.abs();
    if abs >= 1000.0 {
        let digits = format!("{abs:.0}");
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{}{grouped}", if x < 0.0 { "-" } else { "" })
    } else if abs >= 100.0 {
        format!("{x:.1}")
    } else if abs >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn figures_print_with_separators_and_fewer_decimals_when_large() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(-12_000.0), "-12,000");
        assert_eq!(number(999.94), "999.9");
        assert_eq!(number(12.345), "12.35");
        assert_eq!(number(0.12345), "0.123");
        assert_eq!(number(f64::NAN), "-");
        assert_eq!(number(f64::INFINITY), "-");
    }
}
