//! Unit tests of the journal's scan on bytes in memory.

use klio_wal::{Lsn, SegmentNo, SegmentSize, TimelineId};

use super::defect::{FrameCheck, FrameDefect, JournalDamage, ScanStop};
use super::format::{HEADER_LEN, encode_frame};
use super::scan::{ScanError, scan};
use super::source::nonzero_tail_end;

fn tl(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

fn size() -> SegmentSize {
    SegmentSize::new(1 << 20).unwrap()
}

fn journal(frames: &[(u64, &[u8], bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(start, data, continued) in frames {
        out.extend(encode_frame(tl(1), Lsn(start), data, continued));
    }
    out.resize(out.len() + 100, 0);
    out
}

#[test]
fn scans_valid_frames_and_stops_at_zeros() {
    let seg = 5u64 << 20;
    let j = journal(&[(seg, b"abc", false), (seg + 3, b"defg", false)]);
    let s = scan(j.as_slice(), tl(1), SegmentNo(5), size()).unwrap();
    assert_eq!(s.frames.len(), 2);
    assert_eq!(s.end, Lsn(seg + 7));
    assert_eq!(s.write_offset, 2 * HEADER_LEN + 7);
    assert!(!s.complete);
    assert_eq!(s.stop_reason, Some(ScanStop::Frame(FrameDefect::Zeros)));
    // Wrong timeline or segment: nothing valid.
    assert!(
        scan(j.as_slice(), tl(2), SegmentNo(5), size())
            .unwrap()
            .frames
            .is_empty()
    );
    assert!(
        scan(j.as_slice(), tl(1), SegmentNo(4), size())
            .unwrap()
            .frames
            .is_empty()
    );
}

#[test]
fn torn_tail_is_accepted_and_damage_in_the_middle_is_not() {
    let seg = 0u64;
    // Last frame torn: accepted, durable end before it.
    let mut j = journal(&[(seg, b"abc", false), (seg + 3, b"defg", false)]);
    let last_data = (2 * HEADER_LEN + 5) as usize;
    j[last_data] ^= 0xff;
    let s = scan(j.as_slice(), tl(1), SegmentNo(0), size()).unwrap();
    assert_eq!(s.end, Lsn(3));
    // First frame damaged, later synced frames follow: damage.
    let mut j = journal(&[
        (seg, b"abc", false),
        (seg + 3, b"defg", false),
        (seg + 7, b"h", false),
    ]);
    j[HEADER_LEN as usize] ^= 1;
    assert!(matches!(
        scan(j.as_slice(), tl(1), SegmentNo(0), size()),
        Err(ScanError::Damaged {
            offset: 0,
            damage: JournalDamage::DamagedAfterSync {
                start: Lsn(0),
                len: 3,
                check: FrameCheck::Crc,
            },
        })
    ));
    // Damaged frame was continued by frames of the same unsynced batch only: torn.
    let mut j = journal(&[(seg, b"abc", true), (seg + 3, b"defg", false)]);
    j[HEADER_LEN as usize] ^= 1;
    let s = scan(j.as_slice(), tl(1), SegmentNo(0), size()).unwrap();
    assert_eq!(s.end, Lsn(0));
    assert!(s.frames.is_empty());
}

#[test]
fn nonzero_tail() {
    let mut v = vec![0u8; 3 << 20];
    assert_eq!(nonzero_tail_end(v.as_slice(), 0).unwrap(), None);
    v[(2 << 20) + 7] = 1;
    assert_eq!(
        nonzero_tail_end(v.as_slice(), 10).unwrap(),
        Some((2 << 20) + 8)
    );
    assert_eq!(nonzero_tail_end(v.as_slice(), (2 << 20) + 8).unwrap(), None);
}

#[test]
fn what_stops_a_plain_scan_is_named_by_a_typed_defect() {
    let stop = |j: &[u8]| scan(j, tl(1), SegmentNo(0), size()).unwrap().stop_reason;
    let good = journal(&[(0, b"abc", false)]);
    let second = (HEADER_LEN + 3) as usize;
    // A frame that does not continue the first one: a torn tail in a plain journal (its
    // header is not authenticated, so it proves nothing).
    let mut j = good[..second].to_vec();
    j.extend(encode_frame(tl(1), Lsn(4), b"x", false));
    assert_eq!(
        stop(&j),
        Some(ScanStop::Frame(FrameDefect::Discontinuity {
            expected: Lsn(3),
            got: Lsn(4),
        }))
    );
    let mut j = good[..second].to_vec();
    j.extend(encode_frame(tl(2), Lsn(3), b"x", false));
    assert_eq!(
        stop(&j),
        Some(ScanStop::Frame(FrameDefect::OtherTimeline {
            expected: 1,
            got: 2
        }))
    );
    assert_eq!(
        stop(&good[..second + 10]),
        Some(ScanStop::Frame(FrameDefect::TornHeader))
    );
    let mut j = good.clone();
    j[second] = b'X';
    assert_eq!(stop(&j), Some(ScanStop::Frame(FrameDefect::BadMagic)));
    let mut j = good[..second].to_vec();
    j.extend(&encode_frame(tl(1), Lsn(3), b"xyz", false)[..HEADER_LEN as usize + 1]);
    assert_eq!(stop(&j), Some(ScanStop::Frame(FrameDefect::TornData)));
    let mut j = good.clone();
    j[HEADER_LEN as usize] ^= 1;
    assert_eq!(stop(&j), Some(ScanStop::Frame(FrameDefect::BadCrc)));
}

#[test]
fn only_well_formed_headers_that_do_not_fit_are_out_of_place() {
    for defect in [
        FrameDefect::OtherTimeline {
            expected: 1,
            got: 2,
        },
        FrameDefect::Discontinuity {
            expected: Lsn(3),
            got: Lsn(4),
        },
        FrameDefect::OutOfSequence {
            expected: 1,
            got: 0,
        },
    ] {
        assert!(defect.is_out_of_place(), "{defect}");
    }
    for defect in [
        FrameDefect::TornHeader,
        FrameDefect::Zeros,
        FrameDefect::BadMagic,
        FrameDefect::UnknownVersion { version: 2 },
        FrameDefect::ReservedBits,
        FrameDefect::LengthOutOfRange { len: 0 },
        FrameDefect::TornData,
        FrameDefect::BadCrc,
        FrameDefect::BadTag,
    ] {
        assert!(!defect.is_out_of_place(), "{defect}");
    }
}
