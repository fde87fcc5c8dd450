//! How benchmark figures are printed, shared by the benchmarks' own tables
//! and BENCHMARKS.md (the tests crate includes this file by path).

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
