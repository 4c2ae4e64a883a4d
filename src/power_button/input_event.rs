//! Decoding the kernel's `struct input_event` as read from `/dev/input/event*`.
//!
//! Layout (linux/input.h): `struct timeval time; __u16 type; __u16 code; __s32 value;`. The timeval is two
//! C longs, so an event is 24 bytes on 64-bit targets and 16 on 32-bit ones. Reads from an evdev device
//! always return whole events, but a FIFO standing in for one in tests may not, so [`Decoder`] carries a
//! partial event over to the next read.
#![forbid(unsafe_code)]

/// `EV_KEY`: key and button events.
pub const EV_KEY: u16 = 0x01;
/// `KEY_POWER`: what the ACPI power button (and QEMU's `system_powerdown`) reports.
pub const KEY_POWER: u16 = 116;
/// Size of `struct timeval` on this target.
const TIMEVAL_SIZE: usize = 2 * std::mem::size_of::<libc::c_long>();
/// Size of one `struct input_event` on this target.
pub const EVENT_SIZE: usize = TIMEVAL_SIZE + 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    /// For keys: 1 press, 0 release, 2 autorepeat.
    pub value: i32,
}

impl InputEvent {
    /// A press of the power key (not its release or autorepeat).
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }

    /// The bytes the kernel would deliver for this event (time zeroed); for tests and fake devices.
    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        let mut out = [0u8; EVENT_SIZE];
        out[TIMEVAL_SIZE..TIMEVAL_SIZE + 2].copy_from_slice(&self.kind.to_ne_bytes());
        out[TIMEVAL_SIZE + 2..TIMEVAL_SIZE + 4].copy_from_slice(&self.code.to_ne_bytes());
        out[TIMEVAL_SIZE + 4..TIMEVAL_SIZE + 8].copy_from_slice(&self.value.to_ne_bytes());
        out
    }
}

/// Decode one event from exactly [`EVENT_SIZE`] bytes; `None` for any other length.
pub fn decode(bytes: &[u8]) -> Option<InputEvent> {
    if bytes.len() != EVENT_SIZE {
        return None;
    }
    let field = &bytes[TIMEVAL_SIZE..];
    Some(InputEvent {
        kind: u16::from_ne_bytes([field[0], field[1]]),
        code: u16::from_ne_bytes([field[2], field[3]]),
        value: i32::from_ne_bytes([field[4], field[5], field[6], field[7]]),
    })
}

/// Turns a stream of reads into events, keeping an incomplete trailing event for the next read.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Vec<u8>,
}

impl Decoder {
    /// Feed the bytes of one read; calls `each` for every complete event, in order.
    pub fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(InputEvent)) {
        if !self.partial.is_empty() {
            let need = EVENT_SIZE - self.partial.len();
            let take = need.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < EVENT_SIZE {
                return;
            }
            if let Some(event) = decode(&self.partial) {
                each(event);
            }
            self.partial.clear();
        }
        let mut chunks = bytes.chunks_exact(EVENT_SIZE);
        for chunk in &mut chunks {
            if let Some(event) = decode(chunk) {
                each(event);
            }
        }
        self.partial.extend_from_slice(chunks.remainder());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POWER_PRESS: InputEvent = InputEvent {
        kind: EV_KEY,
        code: KEY_POWER,
        value: 1,
    };

    #[test]
    fn event_size_matches_the_kernel_layout() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(EVENT_SIZE, 24);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(EVENT_SIZE, 16);
    }

    #[test]
    fn decodes_a_power_press_written_byte_by_byte_like_the_kernel() {
        let mut raw = vec![0u8; EVENT_SIZE];
        // A non-zero timestamp must not confuse the decoder.
        raw[0] = 0x55;
        raw[TIMEVAL_SIZE - 1] = 0x7f;
        raw[TIMEVAL_SIZE..TIMEVAL_SIZE + 2].copy_from_slice(&1u16.to_ne_bytes());
        raw[TIMEVAL_SIZE + 2..TIMEVAL_SIZE + 4].copy_from_slice(&116u16.to_ne_bytes());
        raw[TIMEVAL_SIZE + 4..].copy_from_slice(&1i32.to_ne_bytes());
        let event = decode(&raw).unwrap();
        assert_eq!(event, POWER_PRESS);
        assert!(event.is_power_press());
    }

    #[test]
    fn release_repeat_and_other_keys_are_not_presses() {
        for event in [
            InputEvent {
                value: 0,
                ..POWER_PRESS
            },
            InputEvent {
                value: 2,
                ..POWER_PRESS
            },
            InputEvent {
                code: 115,
                ..POWER_PRESS
            },
            InputEvent {
                kind: 0,
                code: 0,
                value: 0,
            },
        ] {
            assert!(!event.is_power_press(), "{event:?}");
        }
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0u8; EVENT_SIZE - 1]), None);
        assert_eq!(decode(&[0u8; EVENT_SIZE + 1]), None);
    }

    #[test]
    fn encode_round_trips() {
        let event = InputEvent {
            kind: 4,
            code: 0xbeef,
            value: -7,
        };
        assert_eq!(decode(&event.encode()), Some(event));
    }

    #[test]
    fn decoder_reassembles_events_split_across_reads() {
        let syn = InputEvent {
            kind: 0,
            code: 0,
            value: 0,
        };
        let mut stream = Vec::new();
        for event in [
            POWER_PRESS,
            syn,
            InputEvent {
                value: 0,
                ..POWER_PRESS
            },
        ] {
            stream.extend_from_slice(&event.encode());
        }
        // Every way of cutting the stream into two reads, and one byte per read.
        for cut in 0..=stream.len() {
            let mut decoder = Decoder::default();
            let mut seen = Vec::new();
            decoder.feed(&stream[..cut], |e| seen.push(e));
            decoder.feed(&stream[cut..], |e| seen.push(e));
            assert_eq!(seen.len(), 3, "cut at {cut}");
            assert_eq!(seen[0], POWER_PRESS);
        }
        let mut decoder = Decoder::default();
        let mut presses = 0;
        for byte in &stream {
            decoder.feed(std::slice::from_ref(byte), |e| {
                presses += usize::from(e.is_power_press())
            });
        }
        assert_eq!(presses, 1);
    }
}
