//! Memory budgets: the bytes this machine can still give, a `--max-memory` size as a person
//! writes it, and the refusal of a request whose estimated peak exceeds the budget (the
//! estimates themselves are the stages' own, e.g. `fmn_sd::memory`).

const MIB: f64 = (1u64 << 20) as f64;

/// A request refused before it started: its estimated peak exceeds the budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{request} needs an estimated {estimate}, more than {budget_source} ({budget}); ask for \
     less (smaller images, fewer at once) or set --max-memory if the estimate is wrong"
)]
pub struct TooLarge {
    pub request: String,
    pub estimate: String,
    pub budget: String,
    pub budget_source: &'static str,
}

/// `"3.4 GiB"`, `"812 MiB"`, `"200 KiB"`.
pub fn human(bytes: f64) -> String {
    const GIB: f64 = 1024.0 * MIB;
    if bytes >= 1024.0 * 1024.0 * GIB {
        format!("{:.3e} GiB", bytes / GIB)
    } else if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else if bytes >= MIB {
        format!("{:.0} MiB", bytes / MIB)
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

/// A memory size as a person writes it: `12G`, `1.5GiB`, `800M`, `800MB`, or bytes.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a size such as 12G, 800M or 1.5GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (expected K, M, G or T)"
            ))
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}`: expected a positive size"));
    }
    Ok(bytes as u64)
}

/// Bytes this process can still allocate: the smaller of the kernel's `MemAvailable` and
/// what the cgroup's limit leaves (v2 `memory.max`, v1 `memory.limit_in_bytes`). `None` where
/// neither can be read (not Linux).
pub fn available() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let meminfo = read("/proc/meminfo").and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let number = |p: &str| read(p).and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = number("/sys/fs/cgroup/memory.max")
        .map(|max| max.saturating_sub(number("/sys/fs/cgroup/memory.current").unwrap_or(0)))
        .or_else(|| {
            number("/sys/fs/cgroup/memory/memory.limit_in_bytes")
                // v1 writes a huge number for "no limit".
                .filter(|&l| l < (1u64 << 60))
                .map(|l| {
                    l.saturating_sub(
                        number("/sys/fs/cgroup/memory/memory.usage_in_bytes").unwrap_or(0),
                    )
                })
        });
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Refuses `request` (a person's words for it, e.g. `sampling 4 images of 512x512`) when its
/// estimated peak `total` bytes (`described` by what holds them) exceed `limit`
/// (`--max-memory`) or, without one, the available memory.
pub fn check(
    total: u64,
    described: &str,
    request: &str,
    limit: Option<u64>,
) -> Result<(), TooLarge> {
    let (budget, budget_source) = match limit {
        Some(l) => (l, "the --max-memory limit"),
        None => match available() {
            Some(a) => (a, "the available memory"),
            None => return Ok(()),
        },
    };
    if total > budget {
        return Err(TooLarge {
            request: request.to_string(),
            estimate: described.to_string(),
            budget: human(budget as f64),
            budget_source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_written() {
        assert_eq!(parse_size("12G"), Ok(12 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("800 MB"), Ok(800 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "G", "-1G", "1X", "0", "nanG"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn over_the_limit_is_refused_with_the_numbers() {
        let err = check(3 << 30, "3.0 GiB (...)", "sampling 1 image", Some(2 << 30)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sampling 1 image needs an estimated 3.0 GiB"),
            "{msg}"
        );
        assert!(msg.contains("--max-memory limit (2.0 GiB)"), "{msg}");
        assert_eq!(check(1 << 30, "", "x", Some(2 << 30)), Ok(()));
    }
}
