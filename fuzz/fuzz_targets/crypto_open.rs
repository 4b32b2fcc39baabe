#![no_main]
//! Sealed objects are read back from disk and object storage: opening must reject any bytes
//! that are not an intact object with a clear error, never panic, and never allocate more
//! than a chunk allows. Fed whole to `open`, and in two pieces to the streaming `Opener`, under
//! a fixed test key. Inputs starting with the object magic also get a valid header with that
//! key prepended, so the fuzzer reaches the chunk parser.

use klio_crypto::{
    Compression, HEADER_LEN, Kek, Keyring, MAGIC, Opener, SealOptions, SystemRandom, open, seal,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keyring = Keyring::new(Kek::from_bytes(&[0x5a; 32]).expect("32-byte key"));

    let whole = open(&keyring, data);
    let split = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    let mut opener = Opener::new(&keyring);
    let streamed = opener
        .feed(&data[..split])
        .and_then(|mut out| {
            out.extend(opener.feed(&data[split..])?);
            Ok(out)
        })
        .and_then(|out| opener.finish().map(|()| out));
    // Both readers agree on whether the bytes are an intact object, and on its plaintext.
    assert_eq!(whole.is_ok(), streamed.is_ok());
    if let (Ok(a), Ok(b)) = (&whole, &streamed) {
        assert_eq!(a, b);
    }

    // Chunks after a genuine header: every chunk frame the fuzzer invents must be refused.
    if data.starts_with(&MAGIC) {
        let opts = SealOptions {
            compression: Compression::Lz4,
            chunk_size: 64,
        };
        let rng = SystemRandom::new();
        let genuine = seal(&keyring, &opts, b"", &rng).expect("seal");
        let mut forged = genuine[..HEADER_LEN].to_vec();
        forged.extend_from_slice(&data[MAGIC.len()..]);
        if let Ok(plain) = open(&keyring, &forged) {
            panic!("forged chunks opened to {} bytes", plain.len());
        }
        // And sealing the input round-trips, with a chunk size taken from the input.
        let opts = SealOptions {
            compression: match data.len() % 3 {
                0 => Compression::None,
                1 => Compression::Lz4,
                _ => Compression::Zstd { level: 1 },
            },
            chunk_size: 1 + data.len() % 97,
        };
        let object = seal(&keyring, &opts, data, &rng).expect("seal");
        assert_eq!(open(&keyring, &object).expect("open"), data);
    }
});
