//! Whole numbers in request bodies as JSON Schema counts them: `3` and `3.0` are the same
//! integer (JSON has one number type, and clients such as JavaScript's cannot tell them
//! apart), so both are accepted; `3.5`, negative numbers and values out of range are not.

use serde::de::{Deserializer, Error, Unexpected, Visitor};

/// `#[serde(deserialize_with = "crate::whole_number::de")]` for an unsigned integer field.
pub fn de<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = d.deserialize_any(WholeVisitor)?;
    T::try_from(n)
        .map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(n), &"a smaller number"))
}

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a whole number at least 0")
    }

    fn visit_u64<E: Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }

    fn visit_i64<E: Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
    }

    fn visit_f64<E: Error>(self, n: f64) -> Result<u64, E> {
        // Up to 2^53 every whole f64 is exact; beyond, `9007199254740993.0` would be read
        // as a neighbour.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if n.fract() == 0.0 && (0.0..=EXACT).contains(&n) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(n as u64)
        } else {
            Err(E::invalid_value(Unexpected::Float(n), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::de")]
        n: u8,
    }

    fn parse(json: &str) -> Option<u8> {
        serde_json::from_str::<Body>(json).ok().map(|b| b.n)
    }

    #[test]
    fn integral_numbers_in_either_form_are_accepted() {
        assert_eq!(parse(r#"{"n": 3}"#), Some(3));
        assert_eq!(parse(r#"{"n": 3.0}"#), Some(3));
        assert_eq!(parse(r#"{"n": 255e0}"#), Some(255));
    }

    #[test]
    fn fractions_negatives_out_of_range_and_strings_are_refused() {
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": -1.0}"#,
            r#"{"n": 256}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": "3"}"#,
            r#"{"n": null}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
