//! Go's value syntax, as kamal-proxy's flags take and `list` prints it:
//! durations (`time.ParseDuration`, `Duration.String`) and booleans
//! (`strconv.ParseBool`).

use std::time::Duration;

use crate::log::json_str;

pub(crate) fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration \"{input}\"");
    let s = input.strip_prefix('+').unwrap_or(input);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (ip, fp) = num.split_once('.').unwrap_or((num, ""));
        if (ip.is_empty() && fp.is_empty()) || fp.contains('.') {
            return Err(err());
        }
        let ipv: u128 = if ip.is_empty() {
            0
        } else {
            ip.parse().map_err(|_| err())?
        };
        let mut fv: u128 = 0;
        let mut scale: u128 = 1;
        for c in fp.chars().take(18) {
            fv = fv * 10 + u128::from(c.to_digit(10).ok_or_else(err)?);
            scale *= 10;
        }
        let part = ipv
            .checked_mul(mult)
            .and_then(|v| v.checked_add(fv * mult / scale))
            .ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
    }
    let ns = u64::try_from(total).map_err(|_| err())?;
    Ok(Duration::from_nanos(ns))
}

fn frac_unit(ns: u128, unit: u128) -> String {
    let whole = ns / unit;
    let frac = ns % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Formats like Go's time.Duration.String() (e.g. "30s", "500ms", "1m0s").
pub(crate) fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", frac_unit(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac_unit(ns, 1_000_000));
    }
    let total_secs = ns / 1_000_000_000;
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let secs = frac_unit(ns % 60_000_000_000, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

pub(crate) fn parse_go_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {}: invalid syntax",
            json_str(v)
        )),
    }
}
