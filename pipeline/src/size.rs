//! Sizes on the command line (`2GiB`, `512MiB`).

/// Parses a size such as `2GiB`, `512MiB`, `1G` or a number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use KiB, MiB, GiB)"
            ));
        }
    };
    Ok((number * scale as f64) as usize)
}

/// The smallest memory limit accepted: below it no query can hold a batch.
const MIN_MEMORY_LIMIT: usize = 16 << 20;

/// Parses a memory limit: a size of at least 16 MiB.
pub fn parse_memory_limit(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size < MIN_MEMORY_LIMIT {
        return Err(format!(
            "'{text}' is too small for a memory limit: at least 16MiB"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::{parse_memory_limit, parse_size};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("2 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("GiB").is_err());
        assert!(
            parse_memory_limit("0")
                .unwrap_err()
                .contains("at least 16MiB")
        );
        assert_eq!(parse_memory_limit("64MiB"), Ok(64 << 20));
    }
}
