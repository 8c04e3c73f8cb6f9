//! The PostgreSQL v3 wire protocol as the proxy needs it: raw frames, startup packets, and encoders.

pub mod frame;
pub mod messages;
pub mod startup;
pub mod status;

#[cfg(test)]
mod fuzz;

pub use frame::tag;
pub use status::TxStatus;

/// Protocol violations seen while framing; each ends the connection with SQLSTATE 08P01.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame header declared a length outside `4..=MAX_FRAME_LEN`.
    #[error("invalid message length {len} for message type {}", char::from(*tag))]
    BadLength {
        /// The frame's tag byte.
        tag: u8,
        /// The declared length.
        len: usize,
    },
    /// A startup packet that cannot be parsed.
    #[error("{0}")]
    BadStartup(&'static str),
    /// A protocol major version other than 3.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u32, u32),
    /// A frame that is too short for what its tag requires.
    #[error("malformed {} message", char::from(*.0))]
    Malformed(u8),
    /// The peer sent something that is not allowed at this point of the dialogue.
    #[error("{0}")]
    Unexpected(&'static str),
    /// A ReadyForQuery whose transaction status is not `I`, `T` or `E`.
    #[error("invalid transaction status {} in ReadyForQuery", char::from(*.0))]
    BadTxStatus(u8),
    /// A client message type the protocol does not have (PostgreSQL's wording).
    #[error("invalid frontend message type {0}")]
    UnknownMessage(u8),
    /// A client message larger than `max_packet_size`.
    #[error("message of {len} bytes is larger than max_packet_size ({max} bytes)")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}
