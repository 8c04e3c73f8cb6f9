//! The transaction status a ReadyForQuery carries, as a type rather than a byte.

use super::WireError;

/// Transaction status from the server's last ReadyForQuery (or the one the proxy last sent a
/// client). The discriminants are the protocol's bytes, so writing one out costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TxStatus {
    /// `I`: no transaction block is open; the server may serve another client.
    #[default]
    Idle = b'I',
    /// `T`: inside a transaction block.
    InTransaction = b'T',
    /// `E`: inside a failed transaction block (statements are refused until it ends).
    Failed = b'E',
}

impl TxStatus {
    /// Parses the status byte; any byte but `I`, `T` or `E` is a protocol violation.
    #[inline]
    pub fn from_byte(b: u8) -> Result<TxStatus, BadTxStatus> {
        match b {
            b'I' => Ok(TxStatus::Idle),
            b'T' => Ok(TxStatus::InTransaction),
            b'E' => Ok(TxStatus::Failed),
            other => Err(BadTxStatus(Some(other))),
        }
    }

    /// The byte ReadyForQuery carries for this status.
    #[inline]
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// True outside any transaction block.
    #[inline]
    pub fn is_idle(self) -> bool {
        self == TxStatus::Idle
    }

    /// True inside a transaction block, failed or not: the server stays with its client.
    #[inline]
    pub fn in_block(self) -> bool {
        self != TxStatus::Idle
    }
}

/// A ReadyForQuery without a valid status: the byte it carried, or `None` if it had none. Two
/// bytes, so the relay returns it in a register; it becomes a [`WireError`] where it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTxStatus(pub Option<u8>);

impl From<BadTxStatus> for WireError {
    fn from(e: BadTxStatus) -> WireError {
        match e.0 {
            Some(b) => WireError::BadTxStatus(b),
            None => WireError::Malformed(super::tag::READY_FOR_QUERY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_protocol_bytes() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from_byte(s.byte()).unwrap(), s);
        }
        let bad = TxStatus::from_byte(b'X').unwrap_err();
        assert!(matches!(WireError::from(bad), WireError::BadTxStatus(b'X')));
    }
}
