//! The common name (CN) of a client certificate's subject, read from its DER encoding.
//!
//! A small DER walker rather than a full X.509 crate: rustls has already verified the chain, and
//! all `auth.type = "cert"` needs is one attribute of the subject.

/// OID 2.5.4.3 (commonName), DER-encoded.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// One DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert, _) = tlv(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = tlv(cert)?; // TBSCertificate SEQUENCE
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2; // serial, signature algorithm, issuer, validity
    }
    let (_, subject, _) = tlv(rest)?;
    let mut rdns = subject;
    while let Some((_, set, next)) = tlv(rdns) {
        let (_, attr, _) = tlv(set)?; // AttributeTypeAndValue SEQUENCE
        let (_, oid, value) = tlv(attr)?;
        if oid == CN_OID {
            let (_, text, _) = tlv(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
        rdns = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cn_of_the_dev_client_certificate() {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/client.crt")).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("app"));
        for cut in 0..der.len() {
            let _ = common_name(&der[..cut]);
        }
    }
}
