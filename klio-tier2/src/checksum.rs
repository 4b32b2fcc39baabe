//! The CRC32C that travels with every object, in S3's text form: the base64 of its four
//! big-endian bytes, as in the `x-amz-checksum-crc32c` header. The same text is stored as the
//! object's `x-amz-meta-klio-crc32c` metadata, which reads check whatever the server verified.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The user-metadata name of the object's CRC32C (sent as `x-amz-meta-klio-crc32c`).
pub(crate) const METADATA_KEY: &str = "klio-crc32c";

/// The CRC32C of `bytes` in S3's base64 form.
pub(crate) fn crc32c_base64(bytes: &[u8]) -> String {
    encode(crc32c::crc32c(bytes))
}

/// `crc` in S3's base64 form.
pub(crate) fn encode(crc: u32) -> String {
    STANDARD.encode(crc.to_be_bytes())
}

/// The CRC32C in S3's base64 form, or `None` when `text` is not one.
pub(crate) fn decode(text: &str) -> Option<u32> {
    let bytes = STANDARD.decode(text).ok()?;
    let bytes: [u8; 4] = bytes.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_is_s3s_base64_of_the_big_endian_crc() {
        // CRC32C("123456789") = 0xE3069283, S3's documented check value.
        assert_eq!(crc32c_base64(b"123456789"), "4waSgw==");
        assert_eq!(decode("4waSgw=="), Some(0xE306_9283));
    }

    #[test]
    fn text_that_is_not_four_bytes_is_no_crc() {
        assert_eq!(decode("4waSgw"), None);
        assert_eq!(decode("AAAAAAA="), None);
        assert_eq!(decode("not base64!"), None);
    }
}
