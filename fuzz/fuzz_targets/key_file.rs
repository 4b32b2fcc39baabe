#![no_main]
//! Key files are written by operators and their tools: reading one must give a key or a clear
//! error, never panic. A passphrase key file that parses must encode back to a file that
//! parses to the same thing.

use klio_crypto::{Kek, PassphraseKeyFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Kek::from_key_file_contents(data);
    if PassphraseKeyFile::is_passphrase_key_file(data)
        && let Ok(file) = PassphraseKeyFile::parse(data)
    {
        let again = PassphraseKeyFile::parse(&file.encode()).expect("re-encoded file parses");
        assert_eq!(again, file);
    }
});
