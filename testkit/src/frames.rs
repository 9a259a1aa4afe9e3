//! Client frames of RFC 6455 (§5.2): FIN set, masked, as a browser sends
//! them. The bench writes its traffic with this; the tests write frames a
//! WebSocket library would not (pipelined with the upgrade, split, oversized).

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Appends one final frame of `opcode` carrying `payload` masked with `mask`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    // Copied then masked in place: one pass the compiler vectorises.
    let from = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[from..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// One text frame with a fixed mask.
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    encode_client_frame(&mut frame, OP_TEXT, payload, [0x37, 0xfa, 0x21, 0x3d]);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmasks a frame the way a server does: (opcode, payload).
    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask = &frame[at..at + 4];
        let payload = &frame[at + 4..];
        assert_eq!(payload.len(), len);
        let unmasked = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]);
        (frame[0] & 0x0f, unmasked.collect())
    }

    #[test]
    fn frames_of_every_length_form_unmask_to_their_payload() {
        for len in [0, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = masked_text_frame(&payload);
            assert_eq!(frame[0], 0x81);
            assert_ne!(frame[1] & 0x80, 0, "masked");
            assert_eq!(unmask(&frame), (OP_TEXT, payload));
        }
    }
}
