//! PostgreSQL data pages as a backup checks them: the header fields it needs and the page
//! checksum (`src/include/storage/checksum_impl.h`), so that a backup read from the data
//! directory refuses damaged pages as `BASE_BACKUP` does.
//!
//! # The page header (first 24 bytes, host byte order)
//!
//! | offset | field | used for |
//! |---|---|---|
//! | 0 | `pd_lsn`: `xlogid` u32, `xrecoff` u32 | pages written since the backup started are not checked (WAL replay rewrites them) |
//! | 8 | `pd_checksum` u16 | the stored checksum |
//! | 14 | `pd_upper` u16 | 0: a new, never-initialized page, which has no checksum |
//!
//! # The checksum
//!
//! The page (with `pd_checksum` taken as 0) is read as 32 columns of `u32` words; each column
//! is an FNV-1a-like hash (`h = (h ^ v) * 16777619 ^ ((h ^ v) >> 17)`) from its own offset
//! basis, followed by two rounds of 0; the columns are xor-folded, the block number (in the
//! whole relation, across its 1 GiB segment files) xored in, and the result reduced to
//! `(sum % 65535) + 1`.

use klio_wal::Lsn;

/// PostgreSQL's page size, the only one the checks support (PostgreSQL's default).
pub const PAGE_SIZE: usize = 8192;

/// Columns hashed in parallel.
const N_SUMS: usize = 32;

const FNV_PRIME: u32 = 16_777_619;

/// Each column's offset basis.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F_36E9,
    0xB852_5960,
    0x02AB_50AA,
    0x1DE6_6D2A,
    0x79FF_467A,
    0x9BB9_F8A3,
    0x217E_7CD2,
    0x83E1_3D2C,
    0xF8D4_474F,
    0xE39E_B970,
    0x42C6_AE16,
    0x9932_16FA,
    0x7B09_3B5D,
    0x98DA_FF3C,
    0xF718_902A,
    0x0B1C_9CDB,
    0xE58F_764B,
    0x1876_36BC,
    0x5D7B_3BB1,
    0xE73D_E7DE,
    0x92BE_C979,
    0xCCA6_C0B2,
    0x304A_0979,
    0x85AA_43D4,
    0x7831_25BB,
    0x6CA8_EAA2,
    0xE407_EAC6,
    0x4B5C_FC3E,
    0x9FBF_8C76,
    0x15CA_20BE,
    0xF2CA_9FD3,
    0x959B_D756,
];

/// Where `pd_checksum` is.
const CHECKSUM_AT: usize = 8;

fn u16_at(page: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([page[at], page[at + 1]])
}

fn u32_at(page: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL computes for `page` ([`PAGE_SIZE`] bytes) as block `blkno` of its
/// relation.
pub fn checksum(page: &[u8; PAGE_SIZE], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row, words) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (col, sum) in sums.iter_mut().enumerate() {
            let at = 4 * col;
            // The stored checksum counts as zero.
            let value = if row == 0 && at == CHECKSUM_AT {
                u32_at(words, at) & !u32::from_ne_bytes([0xFF, 0xFF, 0, 0])
            } else {
                u32_at(words, at)
            };
            *sum = mix(*sum, value);
        }
    }
    for _ in 0..2 {
        for sum in &mut sums {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    // The remainder is below 65535, so the sum fits.
    ((folded % 65_535) + 1) as u16
}

/// What a backup finds checking one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCheck {
    /// Its checksum is right.
    Valid,
    /// Not checked: a new page (no checksum yet), or written since `start` (WAL replay
    /// rewrites it, and it may be torn by a write in progress).
    Skipped,
    /// The stored checksum is not the computed one.
    Damaged {
        /// What the page says.
        stored: u16,
        /// What its bytes give.
        computed: u16,
    },
}

/// Checks `page`, block `blkno` of its relation, for a backup that started at `start`.
pub fn check(page: &[u8; PAGE_SIZE], blkno: u32, start: Lsn) -> PageCheck {
    let upper = u16_at(page, 14);
    let lsn = (u64::from(u32_at(page, 0)) << 32) | u64::from(u32_at(page, 4));
    if upper == 0 || Lsn(lsn) >= start {
        return PageCheck::Skipped;
    }
    let stored = u16_at(page, CHECKSUM_AT);
    let computed = checksum(page, blkno);
    if stored == computed {
        PageCheck::Valid
    } else {
        PageCheck::Damaged { stored, computed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An initialized page with an LSN, some tuples' worth of bytes and its checksum set.
    fn page(blkno: u32, lsn: u64) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
        p[12..14].copy_from_slice(&40u16.to_ne_bytes());
        p[14..16].copy_from_slice(&8000u16.to_ne_bytes());
        for (i, b) in p[8000..].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let sum = checksum(&p, blkno);
        p[8..10].copy_from_slice(&sum.to_ne_bytes());
        p
    }

    #[test]
    fn a_page_verifies_as_the_block_it_was_written_as_and_no_other() {
        let start = Lsn(0x1_0000_0000);
        let p = page(7, 0x100);
        assert_eq!(check(&p, 7, start), PageCheck::Valid);
        assert!(matches!(check(&p, 8, start), PageCheck::Damaged { .. }));
        // Its own stored checksum does not change what it sums to.
        let mut other = p;
        other[8..10].copy_from_slice(&[0x12, 0x34]);
        assert_eq!(checksum(&other, 7), checksum(&p, 7));
    }

    #[test]
    fn any_flipped_bit_outside_the_checksum_is_found() {
        let start = Lsn(u64::MAX);
        let p = page(3, 0x200);
        for byte in (0..PAGE_SIZE).step_by(97).filter(|b| !(8..10).contains(b)) {
            let mut bad = p;
            bad[byte] ^= 0x10;
            // A flip in pd_upper may turn the page "new" or its LSN past the start.
            if check(&bad, 3, start) == PageCheck::Skipped {
                continue;
            }
            assert!(
                matches!(check(&bad, 3, start), PageCheck::Damaged { .. }),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn new_pages_and_pages_written_since_the_start_are_not_checked() {
        let start = Lsn(0x500);
        let mut bad = page(1, 0x500);
        bad[9000 % PAGE_SIZE] ^= 1;
        assert_eq!(check(&bad, 1, start), PageCheck::Skipped);
        assert_eq!(check(&[0u8; PAGE_SIZE], 1, start), PageCheck::Skipped);
    }
}
