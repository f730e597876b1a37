//! SMP over the serial console: arbitrary line noise through the frame decoder, every
//! packet it yields through the SMP decoder; and every packet framed by rota comes back
//! out of the decoder unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::mcu::smp;
use rota::mcu::transport::serial::{encode_frame, FrameDecoder};
use std::collections::VecDeque;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    let mut out = VecDeque::new();
    dec.push(data, &mut out);
    for packet in &out {
        let _ = smp::decode(packet);
    }
    // Round trip: the input as one packet (the decoder drops, by design, frames too
    // short to hold an SMP header).
    let mut dec = FrameDecoder::new();
    let mut out = VecDeque::new();
    dec.push(&encode_frame(data), &mut out);
    if data.len() >= smp::HEADER_LEN {
        assert_eq!(out.pop_front().as_deref(), Some(data), "frame round trip");
    } else {
        assert!(out.is_empty(), "a frame shorter than a header was accepted");
    }
    let _ = smp::Header::parse(data);
});
