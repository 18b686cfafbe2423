//! Lower-case hex, as trace and span ids are written in JSON, logs and W3C
//! `traceparent` headers.

/// `bytes` as lower-case hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex text back to bytes (a trailing odd digit is ignored); empty when a pair is not
/// hex, which OTLP reads as "no id".
pub fn decode(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| {
            text.get(2 * i..2 * i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<_>>()
        .unwrap_or_default()
}

/// For `#[serde(serialize_with = "crate::util::hex::serialize")]` on byte arrays.
pub fn serialize<S: serde::Serializer, const N: usize>(
    bytes: &[u8; N],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_text() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "000fa5ff");
        assert_eq!(decode("000fa5ff"), bytes);
        assert_eq!(decode("000FA5FF"), bytes);
        assert_eq!(decode("abc"), [0xab]);
        assert!(decode("zz").is_empty());
        assert!(decode("é0").is_empty());
        assert!(decode("").is_empty());
    }
}
