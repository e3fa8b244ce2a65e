//! Parsers for the text the kernel and systemd write. Pure; malformed text is an `Err(reason)`
//! which becomes `Reading::Unreadable`, never a guessed value.

/// A single unsigned integer (`fs.nr_open`).
pub fn u64_value(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse().map_err(|_| format!("not a number: {t:?}"))
}

/// Three whitespace-separated integers (`tcp_mem`, `tcp_rmem`, `tcp_wmem`).
pub fn triple(text: &str) -> Result<[u64; 3], String> {
    let values: Vec<u64> = text
        .split_whitespace()
        .map(|v| {
            v.parse()
                .map_err(|_| format!("not three numbers: {:?}", text.trim()))
        })
        .collect::<Result<_, _>>()?;
    <[u64; 3]>::try_from(values).map_err(|_| format!("not three numbers: {:?}", text.trim()))
}

/// The first number of several (`fs.file-nr`: allocated, free, max).
pub fn first_u64(text: &str) -> Result<u64, String> {
    text.split_whitespace()
        .next()
        .ok_or_else(|| "empty".to_string())
        .and_then(u64_value)
}

/// `ip_local_port_range`: two ports.
pub fn port_range(text: &str) -> Result<(u16, u16), String> {
    let ports: Vec<u16> = text
        .split_whitespace()
        .map(|v| {
            v.parse()
                .map_err(|_| format!("not a port range: {:?}", text.trim()))
        })
        .collect::<Result<_, _>>()?;
    match ports[..] {
        [low, high] => Ok((low, high)),
        _ => Err(format!("not a port range: {:?}", text.trim())),
    }
}

/// `ip_local_reserved_ports`: `8080,9000-9010` or empty.
pub fn port_list(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    t.split(',')
        .map(|part| {
            let part = part.trim();
            let parse = |p: &str| {
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("not a port list: {t:?}"))
            };
            match part.split_once('-') {
                Some((a, b)) => Ok((parse(a)?, parse(b)?)),
                None => parse(part).map(|p| (p, p)),
            }
        })
        .collect()
}

/// A kernel CPU list (`0-3,8,10-11`), empty for none.
pub fn cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let mut cpus = Vec::new();
    for part in t.split(',') {
        let parse = |p: &str| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("not a CPU list: {t:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if b < a || b - a > 65_536 {
                    return Err(format!("not a CPU list: {t:?}"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(parse(part)?),
        }
    }
    Ok(cpus)
}

/// A `/proc/meminfo` field (`MemAvailable`), in bytes.
pub fn meminfo_bytes(text: &str, field: &str) -> Result<u64, String> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return u64_value(kib).map(|k| k * 1024);
        }
    }
    Err(format!("no {field} line"))
}

/// `CapEff` from `/proc/<pid>/status`, as a bit set.
pub fn cap_eff(status: &str) -> Result<u64, String> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| "no CapEff line".to_string())?;
    u64::from_str_radix(line.trim(), 16).map_err(|_| format!("bad CapEff: {:?}", line.trim()))
}

/// `major.minor` of a kernel release (`6.18.44-fc`).
pub fn kernel_version(release: &str) -> Result<(u32, u32), String> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts.next().and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("not a kernel release: {:?}", release.trim())),
    }
}

/// A systemd resource limit value (`LimitNOFILE=`): `65536`, `infinity`, `soft:hard`, and for
/// sizes `K`/`M`/`G`/`T` suffixes (base 1024). Returns the hard limit (`u64::MAX` = infinity):
/// cue-edge raises its soft limit to it at start-up.
pub fn systemd_limit(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let hard = v.rsplit(':').next().unwrap_or(v).trim();
    if hard.eq_ignore_ascii_case("infinity") {
        return Ok(u64::MAX);
    }
    let (digits, scale) = match hard.chars().last() {
        Some('K') => (&hard[..hard.len() - 1], 1u64 << 10),
        Some('M') => (&hard[..hard.len() - 1], 1 << 20),
        Some('G') => (&hard[..hard.len() - 1], 1 << 30),
        Some('T') => (&hard[..hard.len() - 1], 1 << 40),
        _ => (hard, 1),
    };
    digits
        .parse::<u64>()
        .map(|d| d.saturating_mul(scale))
        .map_err(|_| format!("not a limit: {v:?}"))
}

/// `Key=value` settings of an INI-like systemd file, in order (later ones win in systemd).
pub fn systemd_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_triples() {
        assert_eq!(u64_value("1048576\n"), Ok(1_048_576));
        assert!(u64_value("lots").is_err());
        assert_eq!(
            triple("287901\t383869\t575802\n"),
            Ok([287_901, 383_869, 575_802])
        );
        assert!(triple("1 2").is_err());
        assert_eq!(first_u64("494\t0\t2466183\n"), Ok(494));
    }

    #[test]
    fn ports() {
        assert_eq!(port_range("32768\t60999\n"), Ok((32_768, 60_999)));
        assert!(port_range("32768").is_err());
        assert_eq!(port_list("\n"), Ok(vec![]));
        assert_eq!(
            port_list("8080,9000-9010\n"),
            Ok(vec![(8080, 8080), (9000, 9010)])
        );
        assert!(port_list("80,x").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(cpu_list("0-3,8\n"), Ok(vec![0, 1, 2, 3, 8]));
        assert_eq!(cpu_list("\n"), Ok(vec![]));
        assert!(cpu_list("3-1").is_err());
    }

    #[test]
    fn meminfo_and_caps() {
        let meminfo = "MemTotal:       24684096 kB\nMemAvailable:   24022320 kB\n";
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Ok(24_022_320 * 1024)
        );
        assert!(meminfo_bytes(meminfo, "SwapTotal").is_err());
        let status = "Name:\tx\nCapEff:\t000001fffeffffff\n";
        let caps = cap_eff(status).unwrap();
        assert_eq!(caps & (1 << 14), 1 << 14, "CAP_IPC_LOCK");
        assert_eq!(caps & (1 << 24), 0, "no CAP_SYS_RESOURCE");
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v595\n"), Ok((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Ok((5, 4)));
        assert!(kernel_version("linux").is_err());
    }

    #[test]
    fn systemd_values() {
        assert_eq!(systemd_limit("1100800"), Ok(1_100_800));
        assert_eq!(systemd_limit("1024:524288"), Ok(524_288));
        assert_eq!(systemd_limit("infinity"), Ok(u64::MAX));
        assert_eq!(systemd_limit("12M"), Ok(12 << 20));
        assert!(systemd_limit("lots").is_err());
        let settings = systemd_settings("[Service]\n# c\nLimitNOFILE=5\nLimitMEMLOCK = 8M\n");
        assert_eq!(
            settings,
            vec![
                ("LimitNOFILE".to_string(), "5".to_string()),
                ("LimitMEMLOCK".to_string(), "8M".to_string())
            ]
        );
    }
}
