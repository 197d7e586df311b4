//! The control channel between the agent and a process it is creating.
//!
//! A SOCK_SEQPACKET socketpair keeps message boundaries and can carry a file
//! descriptor (the pty master, opened inside the container). Messages are one
//! tag byte plus a payload. The child's end is close-on-exec, so after a
//! successful execve the agent reads end-of-file: that is how it learns the
//! exec worked, with no extra message.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Largest message (error texts are cut to fit).
const MAX_MESSAGE: usize = 4096;

/// What travels on the channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Container process -> agent: its pid (the agent's view).
    Pid(i32),
    /// Agent -> child: you are in the cgroup, go on.
    Go,
    /// Child -> agent: set up and waiting (init) / about to exec (exec).
    Ready,
    /// Agent -> init: exec now.
    Start,
    /// Child -> agent: setup failed with this text.
    Failed(String),
    /// Child -> agent: the channel closed (exec succeeded or the child died).
    Closed,
}

/// Creates the pair: (agent end, child end), both close-on-exec.
pub fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

fn encode(message: &Message) -> Vec<u8> {
    match message {
        Message::Pid(pid) => {
            let mut bytes = vec![b'P'];
            bytes.extend_from_slice(&pid.to_le_bytes());
            bytes
        }
        Message::Go => vec![b'G'],
        Message::Ready => vec![b'R'],
        Message::Start => vec![b'S'],
        Message::Failed(text) => {
            let mut bytes = vec![b'E'];
            bytes.extend(text.as_bytes().iter().take(MAX_MESSAGE - 1));
            bytes
        }
        Message::Closed => Vec::new(),
    }
}

fn decode(bytes: &[u8]) -> Option<Message> {
    Some(match bytes.split_first() {
        None => Message::Closed,
        Some((b'P', rest)) => Message::Pid(i32::from_le_bytes(rest.try_into().ok()?)),
        Some((b'G', [])) => Message::Go,
        Some((b'R', [])) => Message::Ready,
        Some((b'S', [])) => Message::Start,
        Some((b'E', rest)) => Message::Failed(String::from_utf8_lossy(rest).into_owned()),
        Some(_) => return None,
    })
}

/// Sends `message`, with `fd` attached when given.
pub fn send(socket: RawFd, message: &Message, fd: Option<RawFd>) -> nix::Result<()> {
    let bytes = encode(message);
    let iov = [IoSlice::new(&bytes)];
    let fds = fd.map(|fd| [fd]);
    let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    sendmsg::<()>(socket, &iov, &cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one message and any descriptor that came with it.
pub fn receive(socket: &impl AsRawFd) -> nix::Result<(Message, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (len, fd) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fd = None;
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        for raw in fds {
                            // SAFETY: the kernel just gave us this descriptor.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                break (msg.bytes, fd);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    let message = decode(&buf[..len]).unwrap_or(Message::Failed("garbled control message".into()));
    Ok((message, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_close_reads_as_closed() {
        let (a, b) = pair().unwrap();
        for message in [
            Message::Pid(4242),
            Message::Go,
            Message::Ready,
            Message::Failed("no".into()),
        ] {
            send(b.as_raw_fd(), &message, None).unwrap();
            assert_eq!(receive(&a).unwrap().0, message);
        }
        let (r, _w) = nix::unistd::pipe().unwrap();
        send(b.as_raw_fd(), &Message::Ready, Some(r.as_raw_fd())).unwrap();
        let (message, fd) = receive(&a).unwrap();
        assert_eq!(message, Message::Ready);
        assert!(fd.is_some());
        drop(b);
        assert_eq!(receive(&a).unwrap().0, Message::Closed);
    }
}
