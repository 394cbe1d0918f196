//! Column type names as written in specs, mapped to Arrow types.

use arrow_schema::{DataType, TimeUnit};

/// Parses a spec type name (`bigint`, `double`, `decimal(12,2)`, `timestamp`, ...).
///
/// The names follow Spark SQL, which is what data engineers write in Delta schemas.
///
/// ```
/// use arrow_schema::{DataType, TimeUnit};
/// use medallion_pipeline::types::parse_type;
///
/// assert_eq!(parse_type("BIGINT"), Ok(DataType::Int64));
/// assert_eq!(parse_type("decimal(12, 2)"), Ok(DataType::Decimal128(12, 2)));
/// // `timestamp` is an instant (UTC); `timestamp_ntz` a wall-clock time.
/// assert_eq!(
///     parse_type("timestamp"),
///     Ok(DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
/// );
/// assert!(parse_type("decimal(40,2)").is_err());
/// assert!(parse_type("varchar2").unwrap_err().contains("varchar2"));
/// ```
pub fn parse_type(name: &str) -> Result<DataType, String> {
    let lower = name.trim().to_ascii_lowercase();
    let t = match lower.as_str() {
        "string" | "text" | "varchar" => DataType::Utf8,
        "boolean" | "bool" => DataType::Boolean,
        "tinyint" | "byte" => DataType::Int8,
        "smallint" | "short" => DataType::Int16,
        "int" | "integer" => DataType::Int32,
        "bigint" | "long" => DataType::Int64,
        "float" | "real" => DataType::Float32,
        "double" => DataType::Float64,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "timestamp_ntz" => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => return parse_decimal(&lower).ok_or_else(|| unknown(name)),
    };
    Ok(t)
}

fn parse_decimal(lower: &str) -> Option<DataType> {
    let args = lower.strip_prefix("decimal")?.trim();
    if args.is_empty() {
        return Some(DataType::Decimal128(10, 0));
    }
    let inner = args.strip_prefix('(')?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
    let precision: u8 = p.trim().parse().ok()?;
    let scale: i8 = s.trim().parse().ok()?;
    (1..=38).contains(&precision).then_some(())?;
    (0..=precision as i8).contains(&scale).then_some(())?;
    Some(DataType::Decimal128(precision, scale))
}

fn unknown(name: &str) -> String {
    format!(
        "unknown type '{name}' (expected string, boolean, tinyint, smallint, int, bigint, \
         float, double, decimal(p,s), date, timestamp or timestamp_ntz)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_arrow_types() {
        assert_eq!(parse_type("BIGINT").unwrap(), DataType::Int64);
        assert_eq!(
            parse_type("decimal(12, 2)").unwrap(),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(
            parse_type("timestamp").unwrap(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert!(parse_type("decimal(40,2)").is_err());
        assert!(parse_type("varchar2").unwrap_err().contains("varchar2"));
    }
}
