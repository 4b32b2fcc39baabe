#![no_main]
//! Tar archives arrive from the server inside BASE_BACKUP's COPY stream, cut anywhere: the
//! reader must accept any bytes in any pieces without panicking, give the same events and
//! the same verdict whatever the pieces, and never hand out more contents than a header
//! declared.

use bytes::BytesMut;
use klio_proto::tar::{EntryKind, TarError, TarEvent, TarReader};
use libfuzzer_sys::fuzz_target;

/// Events with consecutive contents merged, and the final verdict.
fn read(data: &[u8], piece_len: usize) -> (Vec<TarEvent>, Result<(), TarError>) {
    let mut reader = TarReader::new();
    let mut buf = BytesMut::new();
    let mut events: Vec<TarEvent> = Vec::new();
    let mut open_file: Option<u64> = None;
    let mut in_entry = false;
    for piece in data.chunks(piece_len.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match reader.decode(&mut buf) {
                Ok(Some(event)) => {
                    match &event {
                        TarEvent::Entry(e) => {
                            assert!(!in_entry, "an entry inside an entry");
                            in_entry = true;
                            open_file = match e.kind {
                                EntryKind::File { size } => Some(size),
                                _ => None,
                            };
                        }
                        TarEvent::Data(d) => {
                            assert!(!d.is_empty());
                            let left = open_file.as_mut().expect("data outside a file");
                            *left = left.checked_sub(d.len() as u64).expect("more data than declared");
                        }
                        TarEvent::EntryEnd => {
                            assert!(in_entry);
                            assert!(open_file.unwrap_or(0) == 0, "entry ended early");
                            in_entry = false;
                            open_file = None;
                        }
                        TarEvent::End => assert!(!in_entry && reader.is_ended()),
                    }
                    match (events.last_mut(), event) {
                        (Some(TarEvent::Data(prev)), TarEvent::Data(more)) => {
                            let mut joined = BytesMut::from(&prev[..]);
                            joined.extend_from_slice(&more);
                            *prev = joined.freeze();
                        }
                        (_, event) => events.push(event),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = e.to_string();
                    assert_eq!(reader.finish(), Err(e.clone()));
                    return (events, Err(e));
                }
            }
        }
    }
    let verdict = reader.finish();
    (events, verdict)
}

fuzz_target!(|input: &[u8]| {
    let Some((&piece, data)) = input.split_first() else {
        return;
    };
    let whole = read(data, data.len());
    let pieces = read(data, usize::from(piece) * 7 + 1);
    assert_eq!(whole, pieces);
});
