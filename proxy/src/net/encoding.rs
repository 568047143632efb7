//! Text in the session's `client_encoding`. Postgres converts between the client's encoding
//! and the server's; the proxy reads statements, parameters and prefetched values in the
//! client's encoding (so a vector is computed from the text Postgres itself sees) and writes
//! what it sends in it. An encoding the proxy cannot convert exactly is not guessed at: the
//! caller relays the statement untouched (Postgres and the upcall path serve it).

use std::borrow::Cow;

/// A session's client encoding, by Postgres' name for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientEncoding {
    /// UTF8 (Postgres' default).
    #[default]
    Utf8,
    /// SQL_ASCII: bytes are not converted; read as UTF-8 when they are valid UTF-8.
    SqlAscii,
    /// LATIN1 (ISO 8859-1): byte n is U+00nn, exactly.
    Latin1,
    /// An encoding converted by `encoding_rs` (checked to round-trip exactly).
    Other(&'static encoding_rs::Encoding),
    /// An encoding the proxy does not convert.
    Unsupported,
}

impl ClientEncoding {
    /// The encoding Postgres names `name` (as ParameterStatus reports it).
    pub fn from_name(name: &str) -> Self {
        use encoding_rs as e;
        let upper = name.to_ascii_uppercase().replace(['-', '_'], "");
        let other = |enc| ClientEncoding::Other(enc);
        match upper.as_str() {
            "UTF8" | "UNICODE" => ClientEncoding::Utf8,
            "SQLASCII" => ClientEncoding::SqlAscii,
            "LATIN1" | "ISO88591" => ClientEncoding::Latin1,
            "LATIN2" | "ISO88592" => other(e::ISO_8859_2),
            "LATIN3" | "ISO88593" => other(e::ISO_8859_3),
            "LATIN4" | "ISO88594" => other(e::ISO_8859_4),
            "LATIN6" | "ISO885910" => other(e::ISO_8859_10),
            "LATIN7" | "ISO885913" => other(e::ISO_8859_13),
            "LATIN8" | "ISO885914" => other(e::ISO_8859_14),
            "LATIN9" | "ISO885915" => other(e::ISO_8859_15),
            "LATIN10" | "ISO885916" => other(e::ISO_8859_16),
            "ISO88595" => other(e::ISO_8859_5),
            "ISO88596" => other(e::ISO_8859_6),
            "ISO88597" => other(e::ISO_8859_7),
            "ISO88598" => other(e::ISO_8859_8),
            "WIN1250" => other(e::WINDOWS_1250),
            "WIN1251" => other(e::WINDOWS_1251),
            "WIN1252" => other(e::WINDOWS_1252),
            "WIN1253" => other(e::WINDOWS_1253),
            "WIN1254" => other(e::WINDOWS_1254),
            "WIN1255" => other(e::WINDOWS_1255),
            "WIN1256" => other(e::WINDOWS_1256),
            "WIN1257" => other(e::WINDOWS_1257),
            "WIN1258" => other(e::WINDOWS_1258),
            "WIN866" | "ALT" => other(e::IBM866),
            "WIN874" => other(e::WINDOWS_874),
            "KOI8R" | "KOI8" => other(e::KOI8_R),
            "KOI8U" => other(e::KOI8_U),
            "EUCJP" => other(e::EUC_JP),
            "SJIS" | "SHIFTJIS" => other(e::SHIFT_JIS),
            "EUCKR" => other(e::EUC_KR),
            "GBK" => other(e::GBK),
            "GB18030" => other(e::GB18030),
            "BIG5" => other(e::BIG5),
            _ => ClientEncoding::Unsupported,
        }
    }

    /// True when text needs no conversion (UTF-8 bytes are the text).
    pub fn is_utf8(self) -> bool {
        self == ClientEncoding::Utf8
    }

    /// The text `bytes` stand for, or None when they cannot be read exactly (invalid in the
    /// encoding, or an encoding the proxy does not convert, or no exact round trip).
    pub fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            ClientEncoding::Utf8 | ClientEncoding::SqlAscii => {
                std::str::from_utf8(bytes).ok().map(Cow::Borrowed)
            }
            ClientEncoding::Latin1 => Some(match std::str::from_utf8(bytes) {
                Ok(ascii) if bytes.is_ascii() => Cow::Borrowed(ascii),
                _ => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
            }),
            ClientEncoding::Other(enc) => {
                let text = enc.decode_without_bom_handling_and_without_replacement(bytes)?;
                // Only conversions that give the same bytes back are trusted.
                let (back, _, unmappable) = enc.encode(&text);
                (!unmappable && back.as_ref() == bytes).then_some(text)
            }
            ClientEncoding::Unsupported => None,
        }
    }

    /// `text` in this encoding, or None when it has characters the encoding cannot hold.
    pub fn encode(self, text: &str) -> Option<Cow<'_, [u8]>> {
        match self {
            ClientEncoding::Utf8 | ClientEncoding::SqlAscii => Some(Cow::Borrowed(text.as_bytes())),
            ClientEncoding::Latin1 => {
                if text.is_ascii() {
                    return Some(Cow::Borrowed(text.as_bytes()));
                }
                text.chars()
                    .map(|c| u8::try_from(u32::from(c)).ok())
                    .collect::<Option<Vec<u8>>>()
                    .map(Cow::Owned)
            }
            ClientEncoding::Other(enc) => {
                let (bytes, _, unmappable) = enc.encode(text);
                (!unmappable).then_some(bytes)
            }
            ClientEncoding::Unsupported => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_read_and_written_exactly() {
        let latin1 = ClientEncoding::from_name("LATIN1");
        assert_eq!(latin1.decode(b"caf\xe9").as_deref(), Some("café"));
        assert_eq!(latin1.encode("café").as_deref(), Some(&b"caf\xe9"[..]));
        assert_eq!(latin1.encode("€"), None);
        let all: Vec<u8> = (0..=255).collect();
        let text = latin1.decode(&all).unwrap();
        assert_eq!(latin1.encode(&text).as_deref(), Some(&all[..]));
    }

    #[test]
    fn utf8_must_be_valid_and_other_encodings_round_trip() {
        let utf8 = ClientEncoding::from_name("UTF8");
        assert_eq!(utf8.decode("café".as_bytes()).as_deref(), Some("café"));
        assert_eq!(utf8.decode(b"caf\xe9"), None);
        let win = ClientEncoding::from_name("WIN1252");
        assert_eq!(win.decode(b"\x80 caf\xe9").as_deref(), Some("€ café"));
        assert_eq!(win.encode("€ café").as_deref(), Some(&b"\x80 caf\xe9"[..]));
        let sjis = ClientEncoding::from_name("SJIS");
        let text = "日本語";
        let bytes = sjis.encode(text).unwrap().into_owned();
        assert_eq!(sjis.decode(&bytes).as_deref(), Some(text));
        assert_eq!(
            ClientEncoding::from_name("MULE_INTERNAL").decode(b"x"),
            None
        );
        assert_eq!(ClientEncoding::from_name("latin-1"), ClientEncoding::Latin1);
    }
}
