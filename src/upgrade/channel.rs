//! The handover channel: one end of a SOCK_SEQPACKET socketpair, carrying JSON messages with
//! file descriptors attached (SCM_RIGHTS).
//!
//! A socketpair has no filesystem path, so no other local user can connect to it and inject
//! clients: the new process gets its end inherited as its standard input, nothing else.
//! SEQPACKET keeps message boundaries, so the descriptors of one message never arrive with the
//! bytes of another (a stream socket would need care there). A message longer than one packet
//! goes as several pieces, each starting with a byte saying whether more follow; descriptors
//! ride on the first piece.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use super::message::Message;
use super::UpgradeError;

/// Bytes of payload per packet: well under the default socket buffer (about 200 KiB), which
/// bounds a SEQPACKET message.
const PIECE: usize = 60 * 1024;
/// Descriptors one message may carry (a client's socket; a few spare).
const MAX_FDS: usize = 4;
/// A whole message is bounded so that a confused peer cannot make us buffer without end.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const MORE: u8 = 1;
const LAST: u8 = 0;

/// One end of the handover socketpair. Held as a tokio `UnixDatagram` only to register it with
/// the reactor (a packet socket is message-based like a datagram one); all I/O goes through
/// rustix's sendmsg/recvmsg in `async_io`.
pub struct Channel {
    fd: UnixDatagram,
    /// Held across the pieces of one message, so that two tasks sending at once (the client
    /// sender and a cancel or pid reservation) never interleave pieces.
    sending: tokio::sync::Mutex<()>,
}

/// A new socketpair: (this process's end, the end the new process inherits). Both are
/// close-on-exec; the child's end is given to the child as its standard input, which `Command`
/// duplicates into the child alone.
pub fn pair() -> Result<(Channel, OwnedFd), UpgradeError> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| UpgradeError::Channel(e.into()))?;
    Ok((Channel::new(ours)?, theirs))
}

impl Channel {
    /// Wraps a socket end for async use (sets it non-blocking).
    pub fn new(fd: OwnedFd) -> Result<Channel, UpgradeError> {
        let socket = std::os::unix::net::UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        Ok(Channel { fd: UnixDatagram::from_std(socket)?, sending: tokio::sync::Mutex::new(()) })
    }

    /// Sends `msg` with `fds` attached. The descriptors stay open here; the peer gets its own.
    pub async fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
        let body = serde_json::to_vec(msg).map_err(UpgradeError::Encode)?;
        let _one_at_a_time = self.sending.lock().await;
        let mut pieces = body.chunks(PIECE).peekable();
        let mut first = true;
        if body.is_empty() {
            return Err(UpgradeError::Protocol("empty message"));
        }
        while let Some(piece) = pieces.next() {
            let flag = if pieces.peek().is_some() { MORE } else { LAST };
            let attach = if first { fds } else { &[] };
            self.send_piece(flag, piece, attach).await?;
            first = false;
        }
        Ok(())
    }

    async fn send_piece(&self, flag: u8, piece: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let header = [flag];
        let iov = [IoSlice::new(&header), IoSlice::new(piece)];
        let sent = self
            .fd
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(std::io::Error::other("too many descriptors for one message"));
                }
                sendmsg(self.fd.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL).map_err(std::io::Error::from)
            })
            .await
            .map_err(UpgradeError::Channel)?;
        if sent != piece.len() + 1 {
            return Err(UpgradeError::Protocol("short write on a packet socket"));
        }
        Ok(())
    }

    /// The next message and the descriptors that came with it; `Ok(None)` when the peer has
    /// closed its end.
    pub async fn recv(&self) -> Result<Option<(Message, Vec<OwnedFd>)>, UpgradeError> {
        let mut body = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; PIECE + 1];
        loop {
            let (n, got) = self.recv_piece(&mut buf).await?;
            fds.extend(got);
            if n == 0 {
                return if body.is_empty() { Ok(None) } else { Err(UpgradeError::Protocol("message cut short")) };
            }
            body.extend_from_slice(&buf[1..n]);
            if body.len() > MAX_MESSAGE {
                return Err(UpgradeError::Protocol("message too large"));
            }
            if buf[0] == LAST {
                break;
            }
        }
        let msg = serde_json::from_slice(&body).map_err(UpgradeError::Decode)?;
        Ok(Some((msg, fds)))
    }

    async fn recv_piece(&self, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), UpgradeError> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
        self.fd
            .async_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(buf)];
                let r = recvmsg(self.fd.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                    .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(got) = m {
                        fds.extend(got);
                    }
                }
                if r.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
                    return Err(std::io::Error::other("a handover packet was truncated"));
                }
                Ok((r.bytes, fds))
            })
            .await
            .map_err(UpgradeError::Channel)
    }
}
