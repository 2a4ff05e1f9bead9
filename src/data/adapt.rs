//! The Parquet schema adapter: turns whatever physical type a writer produced into the one
//! canonical Arrow type of the declared column (README, "Pointing it at your own data"), and
//! reports the rows whose value could not be converted (text that does not parse, a fraction in
//! an integer column, an overflow).
//!
//! | declared  | canonical Arrow type             | accepted physical types                          |
//! |-----------|----------------------------------|--------------------------------------------------|
//! | string    | Utf8                             | Utf8, LargeUtf8, Utf8View, dictionaries of them  |
//! | int32/64  | Int32 / Int64                    | any integer, integral floats, decimals, text     |
//! | float64   | Float64                          | any integer or float, decimals, text             |
//! | bool      | Boolean                          | Boolean, 0/1 integers, text (true/false/yes/no)  |
//! | date      | Date32                           | Date32/64, timestamps, text (YYYY-MM-DD)         |
//! | timestamp | Timestamp(µs, "UTC")             | timestamps in any unit and zone, dates, text     |

use std::sync::Arc;

use arrow::array::*;
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, TimeUnit};

use crate::config::ColumnType;

/// The canonical Arrow type of a declared column type.
pub fn canonical_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The result of adapting one column: the canonical array, and the rows whose value was present
/// but could not be converted (they are null in `array`).
#[derive(Debug)]
pub struct Adapted {
    pub array: ArrayRef,
    pub unparseable: Vec<u32>,
    /// Of the unparseable rows, those holding a whole number outside the declared integer
    /// type's range, with the value as it was written (the QA table's reason keeps it).
    pub out_of_range: Vec<(u32, String)>,
}

/// Converts `array` to the canonical type of `ty`. `Err` holds a description of an incompatible
/// physical type (for example a list where a number is declared), which makes the input unusable.
pub fn adapt(array: &ArrayRef, ty: ColumnType) -> Result<Adapted, String> {
    let target = canonical_type(ty);
    if array.data_type() == &target {
        return Ok(Adapted {
            array: array.clone(),
            unparseable: Vec::new(),
            out_of_range: Vec::new(),
        });
    }
    // Unpack dictionaries and run-ends first; the value type decides what happens next.
    let array: ArrayRef = match array.data_type() {
        DataType::Dictionary(_, value) => cast(array, value)?,
        DataType::Null => {
            return Ok(Adapted {
                array: new_null_array(&target, array.len()),
                unparseable: Vec::new(),
                out_of_range: Vec::new(),
            })
        }
        _ => array.clone(),
    };
    let src = array.data_type().clone();
    let out: ArrayRef = match (ty, &src) {
        (ColumnType::String, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
            cast(&array, &target)?
        }
        (ColumnType::Int32 | ColumnType::Int64, t) if t.is_integer() => cast(&array, &target)?,
        (ColumnType::Int32 | ColumnType::Int64, t) if t.is_floating() || is_decimal(t) => {
            let f = cast(&array, &DataType::Float64)?;
            int_from_f64(f.as_any().downcast_ref::<Float64Array>().unwrap(), ty)
        }
        (ColumnType::Int32 | ColumnType::Int64, t) if is_text(t) => {
            let s = cast(&array, &DataType::Utf8)?;
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            let f: Float64Array = s.iter().map(|v| v.and_then(parse_number)).collect();
            int_from_f64(&f, ty)
        }
        (ColumnType::Float64, t) if t.is_numeric() => cast(&array, &target)?,
        (ColumnType::Float64, t) if is_text(t) => {
            let s = cast(&array, &DataType::Utf8)?;
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            Arc::new(
                s.iter()
                    .map(|v| v.and_then(parse_number))
                    .collect::<Float64Array>(),
            )
        }
        (ColumnType::Bool, t) if t.is_integer() => {
            let i = cast(&array, &DataType::Int64)?;
            let i = i.as_any().downcast_ref::<Int64Array>().unwrap();
            Arc::new(
                i.iter()
                    .map(|v| v.and_then(|x| matches!(x, 0 | 1).then_some(x == 1)))
                    .collect::<BooleanArray>(),
            )
        }
        (ColumnType::Bool, t) if is_text(t) => {
            let s = cast(&array, &DataType::Utf8)?;
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            Arc::new(
                s.iter()
                    .map(|v| v.and_then(parse_bool))
                    .collect::<BooleanArray>(),
            )
        }
        (ColumnType::Date, DataType::Date64 | DataType::Timestamp(_, _)) => cast(&array, &target)?,
        (ColumnType::Date, t) if is_text(t) => {
            let s = cast(&array, &DataType::Utf8)?;
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            Arc::new(
                s.iter()
                    .map(|v| {
                        v.and_then(|t| {
                            let t = t.trim();
                            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                                .ok()
                                .or_else(|| {
                                    crate::time::parse_timestamp(t).map(|ts| ts.date_naive())
                                })
                                .map(|d| (d - epoch).num_days() as i32)
                        })
                    })
                    .collect::<Date32Array>(),
            )
        }
        (
            ColumnType::Timestamp,
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64,
        ) => {
            // Zone-less timestamps are taken as UTC; zoned ones keep their instant.
            let naive = cast(&array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let naive = naive
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            Arc::new(naive.with_timezone("UTC"))
        }
        (ColumnType::Timestamp, t) if is_text(t) => {
            let s = cast(&array, &DataType::Utf8)?;
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            let a: TimestampMicrosecondArray = s
                .iter()
                .map(|v| {
                    v.and_then(crate::time::parse_timestamp)
                        .map(|t| t.timestamp_micros())
                })
                .collect();
            Arc::new(a.with_timezone("UTC"))
        }
        _ => {
            return Err(format!(
                "has physical type {src}, which cannot hold a {} value",
                ty.name()
            ));
        }
    };
    let unparseable: Vec<u32> = (0..array.len())
        .filter(|&i| array.is_valid(i) && out.is_null(i))
        .map(|i| i as u32)
        .collect();
    let out_of_range = match ty {
        ColumnType::Int32 | ColumnType::Int64 if !unparseable.is_empty() => {
            out_of_range(&array, ty, &unparseable)
        }
        _ => Vec::new(),
    };
    Ok(Adapted {
        array: out,
        unparseable,
        out_of_range,
    })
}

/// The rows of `rows` whose value is a whole number outside `ty`'s range, with the value as
/// written.
fn out_of_range(array: &ArrayRef, ty: ColumnType, rows: &[u32]) -> Vec<(u32, String)> {
    let (lo, hi) = match ty {
        ColumnType::Int32 => (i32::MIN as f64, i32::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    };
    let numbers: Float64Array = if is_text(array.data_type()) {
        match cast(array, &DataType::Utf8) {
            Ok(s) => s
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|s| s.iter().map(|v| v.and_then(parse_number)).collect())
                .unwrap_or_else(|| Float64Array::new_null(array.len())),
            Err(_) => return Vec::new(),
        }
    } else {
        match cast(array, &DataType::Float64) {
            Ok(f) => f
                .as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .unwrap_or_else(|| Float64Array::new_null(array.len())),
            Err(_) => return Vec::new(),
        }
    };
    let Ok(fmt) =
        arrow::util::display::ArrayFormatter::try_new(array.as_ref(), &Default::default())
    else {
        return Vec::new();
    };
    rows.iter()
        .filter(|&&r| {
            let r = r as usize;
            numbers.is_valid(r) && {
                let x = numbers.value(r);
                x.is_finite() && x.fract() == 0.0 && !(lo..=hi).contains(&x)
            }
        })
        .map(|&r| (r, fmt.value(r as usize).to_string()))
        .collect()
}

fn cast(a: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    // `safe: true` turns values that do not fit into nulls, which `adapt` reports as unparseable.
    cast_with_options(
        a,
        to,
        &CastOptions {
            safe: true,
            ..Default::default()
        },
    )
    .map_err(|e| format!("cannot be converted from {} to {to}: {e}", a.data_type()))
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// Parses a number written as text. Blanks and markers such as `n/a` do not parse.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().or_else(|| {
        t.replace(',', "")
            .parse::<f64>()
            .ok()
            .filter(|_| t.contains(','))
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

fn int_from_f64(f: &Float64Array, ty: ColumnType) -> ArrayRef {
    let (lo, hi) = match ty {
        ColumnType::Int32 => (i32::MIN as f64, i32::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    };
    let ok = |x: f64| x.is_finite() && x.fract() == 0.0 && x >= lo && x <= hi;
    match ty {
        ColumnType::Int32 => Arc::new(
            f.iter()
                .map(|v| v.filter(|&x| ok(x)).map(|x| x as i32))
                .collect::<Int32Array>(),
        ),
        _ => Arc::new(
            f.iter()
                .map(|v| v.filter(|&x| ok(x)).map(|x| x as i64))
                .collect::<Int64Array>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Int32Type;

    #[test]
    fn whole_numbers_beyond_the_type_keep_their_value() {
        let wide: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), Some(3_000_000_000), None]));
        let a = adapt(&wide, ColumnType::Int32).unwrap();
        assert_eq!(a.unparseable, [1]);
        assert_eq!(a.out_of_range, [(1, "3000000000".to_string())]);
        let text: ArrayRef = Arc::new(StringArray::from(vec!["n/a", "-9999999999", "1.5"]));
        let a = adapt(&text, ColumnType::Int32).unwrap();
        assert_eq!(a.unparseable, [0, 1, 2]);
        assert_eq!(a.out_of_range, [(1, "-9999999999".to_string())]);
    }

    fn unparseable(a: ArrayRef, ty: ColumnType) -> (ArrayRef, Vec<u32>) {
        let r = adapt(&a, ty).unwrap();
        assert_eq!(r.array.data_type(), &canonical_type(ty));
        (r.array, r.unparseable)
    }

    #[test]
    fn string_variants_become_utf8() {
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("a"), None]));
        let view: ArrayRef = Arc::new(StringViewArray::from(vec![Some("a"), None]));
        let dict: ArrayRef = Arc::new(
            vec![Some("a"), None]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        for a in [large, view, dict] {
            let (out, bad) = unparseable(a, ColumnType::String);
            let s = out.as_any().downcast_ref::<StringArray>().unwrap();
            assert_eq!(s.value(0), "a");
            assert!(s.is_null(1));
            assert!(bad.is_empty());
        }
    }

    #[test]
    fn ints_accept_wider_ints_floats_and_text() {
        let wide: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), Some(1 << 40), None]));
        let (out, bad) = unparseable(wide, ColumnType::Int32);
        assert_eq!(
            out.as_any().downcast_ref::<Int32Array>().unwrap().value(0),
            5
        );
        assert_eq!(bad, [1]); // does not fit in int32
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![Some(3.0), Some(2.5), None]));
        assert_eq!(unparseable(floats, ColumnType::Int64).1, [1]);
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some(" 42"),
            Some(""),
            Some("n/a"),
            None,
            Some("7.0"),
        ]));
        let (out, bad) = unparseable(text, ColumnType::Int32);
        assert_eq!(bad, [1, 2]);
        assert_eq!(
            out.as_any().downcast_ref::<Int32Array>().unwrap().value(4),
            7
        );
        assert!(out.is_null(3));
    }

    #[test]
    fn floats_from_text_keep_nan_as_a_value() {
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some("1.5"),
            Some("NaN"),
            Some("abc"),
        ]));
        let (out, bad) = unparseable(text, ColumnType::Float64);
        let f = out.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(f.value(0), 1.5);
        assert!(f.value(1).is_nan());
        assert_eq!(bad, [2]);
    }

    #[test]
    fn timestamps_in_any_unit_and_zone_become_utc_micros() {
        let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![Some(
            1_700_000_000_123,
        )]));
        let (out, _) = unparseable(ms, ColumnType::Timestamp);
        let t = out
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(t.value(0), 1_700_000_000_123_000);
        let ns: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![Some(1_700_000_000_123_000_000)])
                .with_timezone("+02:00"),
        );
        let (out, _) = unparseable(ns, ColumnType::Timestamp);
        assert_eq!(
            out.as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .value(0),
            1_700_000_000_123_000
        );
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some("2026-11-20T00:00:00Z"),
            Some("soon"),
        ]));
        assert_eq!(unparseable(text, ColumnType::Timestamp).1, [1]);
    }

    #[test]
    fn bools_from_ints_and_text() {
        let i: ArrayRef = Arc::new(Int8Array::from(vec![0, 1, 2]));
        assert_eq!(unparseable(i, ColumnType::Bool).1, [2]);
        let s: ArrayRef = Arc::new(StringArray::from(vec!["Yes", "no", "maybe"]));
        assert_eq!(unparseable(s, ColumnType::Bool).1, [2]);
    }

    #[test]
    fn incompatible_types_are_refused() {
        let b: ArrayRef = Arc::new(BooleanArray::from(vec![true]));
        assert!(adapt(&b, ColumnType::Timestamp).is_err());
        assert!(adapt(&b, ColumnType::String).is_err());
    }
}
