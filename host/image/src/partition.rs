//! Partition tables: GPT and MBR (with logical partitions), read with every bound checked and
//! written anew for a new layout.
//!
//! Reading refuses what cannot be followed safely: entries outside the disk or the table's usable
//! area, overlapping partitions, an extended-partition chain that loops, a GPT whose header or
//! entry array fails its CRC (the backup header is tried before giving up).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::disk::{Extent, le32, le64};
use crate::error::{ImageError, Result};

pub const SECTOR: u64 = 512;
/// More GPT entries than this is not a table any tool makes; refusing it bounds what we read.
const MAX_GPT_ENTRIES: u32 = 1024;
/// Logical partitions followed in an MBR extended partition.
const MAX_LOGICAL: usize = 128;
/// The 128 entries of 128 bytes that GPT tools reserve.
const GPT_ENTRIES: u32 = 128;
const GPT_ENTRY_SIZE: u32 = 128;
const GPT_ENTRY_SECTORS: u64 = (GPT_ENTRIES * GPT_ENTRY_SIZE) as u64 / SECTOR;

/// The GPT type of an EFI system partition.
pub const ESP_TYPE: Uuid = uuid::uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// The GPT type of GRUB's BIOS boot partition (no file system: GRUB's core image, copied raw).
pub const BIOS_BOOT_TYPE: Uuid = uuid::uuid!("21686148-6449-6e6f-744e-656564454649");
/// The GPT type for Linux file systems.
pub const LINUX_FS_TYPE: Uuid = uuid::uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

/// How a disk is partitioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scheme {
    Gpt {
        disk_guid: Uuid,
    },
    Mbr {
        signature: u32,
    },
    /// A file system on the whole disk.
    None,
}

/// The type of one partition, in the scheme's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionType {
    Gpt(Uuid),
    Mbr(u8),
}

impl PartitionType {
    pub fn is_esp(&self) -> bool {
        matches!(self, Self::Gpt(t) if *t == ESP_TYPE) || matches!(self, Self::Mbr(0xef))
    }
}

/// One partition. Offsets and sizes are bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The number the OS sees (`sda3` is 3): kept across a re-layout, because `/etc/fstab`,
    /// bootloaders and `root=` may name it.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub ptype: PartitionType,
    /// GPT only: the unique partition GUID (`PARTUUID=`), kept across a re-layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// GPT attribute bits, or 0x80 in bit 7 for an MBR active (bootable) partition.
    #[serde(default)]
    pub attributes: u64,
}

/// A partition table as read from a disk, or as planned for a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
    /// The MBR's first 440 bytes (BIOS boot code), kept so a BIOS bootloader still starts.
    #[serde(with = "hex_bytes")]
    pub boot_code: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::PartitionTable(msg.into())
}

/// Reads the partition table of `disk`.
pub fn read(disk: &Extent) -> Result<Table> {
    let sectors = disk.len() / SECTOR;
    if sectors < 2 {
        return Ok(whole_disk());
    }
    let mbr = disk.read_vec(0, SECTOR as usize)?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Ok(whole_disk());
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    // A FAT or NTFS boot sector also ends in 55 AA; its "entries" are code. A real table has
    // status bytes of 0x00 or 0x80 only.
    // A FAT formatted onto the whole disk leaves the table area zeroed: no partitions at all
    // means no table.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) || entries.iter().all(|e| e[4] == 0) {
        return Ok(whole_disk());
    }
    let boot_code = mbr[..440].to_vec();
    let table = if entries.iter().any(|e| e[4] == 0xee) {
        read_gpt(disk, sectors, boot_code)?
    } else {
        read_mbr(disk, sectors, &mbr, &entries, boot_code)?
    };
    check_overlaps(&table.partitions)?;
    Ok(table)
}

fn whole_disk() -> Table {
    Table {
        scheme: Scheme::None,
        partitions: Vec::new(),
        boot_code: Vec::new(),
    }
}

fn read_mbr(
    disk: &Extent,
    sectors: u64,
    mbr: &[u8],
    entries: &[&[u8]],
    boot_code: Vec<u8>,
) -> Result<Table> {
    let mut partitions = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let number = i as u32 + 1;
        let ptype = e[4];
        if ptype == 0 {
            continue;
        }
        let (start, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        check_span(number, start, count, 1, sectors)?;
        if matches!(ptype, 0x05 | 0x0f | 0x85) {
            read_logical(disk, sectors, start, count, &mut partitions)?;
            continue;
        }
        partitions.push(Partition {
            number,
            start: start * SECTOR,
            size: count * SECTOR,
            ptype: PartitionType::Mbr(ptype),
            guid: None,
            name: String::new(),
            attributes: u64::from(e[0] & 0x80),
        });
    }
    Ok(Table {
        scheme: Scheme::Mbr {
            signature: le32(mbr, 440),
        },
        partitions,
        boot_code,
    })
}

fn check_span(number: u32, start: u64, count: u64, first: u64, last: u64) -> Result<()> {
    if count == 0 {
        return Err(bad(format!("partition {number} has no sectors")));
    }
    let end = start
        .checked_add(count)
        .ok_or_else(|| bad(format!("partition {number}: sector overflow")))?;
    if start < first || end > last {
        return Err(bad(format!(
            "partition {number} spans sectors {start}..{end}, outside the usable {first}..{last}"
        )));
    }
    Ok(())
}

/// Follows the chain of extended boot records; each names one logical partition (relative to
/// itself) and the next record (relative to the extended partition).
fn read_logical(
    disk: &Extent,
    sectors: u64,
    ext_start: u64,
    ext_count: u64,
    out: &mut Vec<Partition>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut ebr = ext_start;
    // Linux numbers the logical partitions it finds from 5, skipping empty records.
    let mut number = 5u32;
    loop {
        if seen.len() > MAX_LOGICAL || !seen.insert(ebr) {
            return Err(bad(format!(
                "the extended partition's chain of boot records loops at sector {ebr}"
            )));
        }
        let rec = disk.read_vec(ebr * SECTOR, SECTOR as usize)?;
        if rec[510] != 0x55 || rec[511] != 0xaa {
            return Err(bad(format!(
                "extended boot record at sector {ebr} has no signature"
            )));
        }
        let (e, next) = (&rec[446..462], &rec[462..478]);
        if e[4] != 0 {
            let start = ebr + u64::from(le32(e, 8));
            let count = u64::from(le32(e, 12));
            check_span(
                number,
                start,
                count,
                ext_start,
                (ext_start + ext_count).min(sectors),
            )?;
            out.push(Partition {
                number,
                start: start * SECTOR,
                size: count * SECTOR,
                ptype: PartitionType::Mbr(e[4]),
                guid: None,
                name: String::new(),
                attributes: u64::from(e[0] & 0x80),
            });
            number += 1;
        }
        if next[4] == 0 {
            return Ok(());
        }
        ebr = ext_start + u64::from(le32(next, 8));
        if ebr >= ext_start + ext_count {
            return Err(bad(format!(
                "extended boot record at sector {ebr} lies outside the extended partition"
            )));
        }
    }
}

fn read_gpt(disk: &Extent, sectors: u64, boot_code: Vec<u8>) -> Result<Table> {
    match gpt_at(disk, sectors, 1) {
        Ok(t) => Ok(Table { boot_code, ..t }),
        Err(primary) => {
            // The backup header lives in the last sector; a damaged primary is what it is for.
            gpt_at(disk, sectors, sectors - 1)
                .map(|t| Table { boot_code, ..t })
                .map_err(|_| primary)
        }
    }
}

fn gpt_at(disk: &Extent, sectors: u64, lba: u64) -> Result<Table> {
    let h = disk.read_vec(lba * SECTOR, SECTOR as usize)?;
    if &h[..8] != b"EFI PART" {
        return Err(bad(format!("no GPT header signature at sector {lba}")));
    }
    let size = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Err(bad(format!(
            "GPT header at sector {lba} claims {size} bytes"
        )));
    }
    let mut copy = h[..size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(&h, 16) {
        return Err(bad(format!("GPT header at sector {lba} fails its CRC")));
    }
    if le64(&h, 24) != lba {
        return Err(bad(format!(
            "GPT header at sector {lba} says it is at {}",
            le64(&h, 24)
        )));
    }
    let (first, last) = (le64(&h, 40), le64(&h, 48));
    if first > last || last >= sectors {
        return Err(bad(format!(
            "GPT usable sectors {first}..={last} do not fit a disk of {sectors} sectors"
        )));
    }
    let disk_guid = Uuid::from_bytes_le(h[56..72].try_into().expect("16 bytes"));
    let (entries_lba, count, esize) = (le64(&h, 72), le32(&h, 80), le32(&h, 84));
    if count > MAX_GPT_ENTRIES || esize < 128 || esize % 128 != 0 || esize > 4096 {
        return Err(bad(format!("GPT claims {count} entries of {esize} bytes")));
    }
    let bytes = u64::from(count) * u64::from(esize);
    if entries_lba < 2
        || entries_lba.saturating_mul(SECTOR).saturating_add(bytes) > sectors * SECTOR
    {
        return Err(bad(format!(
            "GPT entry array at sector {entries_lba} lies outside the disk"
        )));
    }
    let array = disk.read_vec(entries_lba * SECTOR, bytes as usize)?;
    if crc32fast::hash(&array) != le32(&h, 88) {
        return Err(bad("the GPT entry array fails its CRC"));
    }
    let mut partitions = Vec::new();
    for (i, e) in array.chunks_exact(esize as usize).enumerate() {
        let ptype = Uuid::from_bytes_le(e[..16].try_into().expect("16 bytes"));
        if ptype.is_nil() {
            continue;
        }
        let number = i as u32 + 1;
        let (start, end) = (le64(e, 32), le64(e, 40));
        if end < start {
            return Err(bad(format!(
                "partition {number} ends (sector {end}) before it starts ({start})"
            )));
        }
        let count = (end - start)
            .checked_add(1)
            .ok_or_else(|| bad(format!("partition {number} has an impossible size")))?;
        check_span(number, start, count, first, last + 1)?;
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        partitions.push(Partition {
            number,
            start: start * SECTOR,
            size: count * SECTOR,
            ptype: PartitionType::Gpt(ptype),
            guid: Some(Uuid::from_bytes_le(e[16..32].try_into().expect("16 bytes"))),
            name: String::from_utf16_lossy(&name),
            attributes: le64(e, 48),
        });
    }
    Ok(Table {
        scheme: Scheme::Gpt { disk_guid },
        partitions,
        boot_code: Vec::new(),
    })
}

fn check_overlaps(parts: &[Partition]) -> Result<()> {
    let mut sorted: Vec<&Partition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        if w[0].start + w[0].size > w[1].start {
            return Err(bad(format!(
                "partitions {} and {} overlap",
                w[0].number, w[1].number
            )));
        }
    }
    Ok(())
}

/// Sectors at the end of a GPT disk that the backup entries and header occupy.
pub fn gpt_tail_sectors() -> u64 {
    GPT_ENTRY_SECTORS + 1
}

/// The first sector a partition may use after a GPT's primary header and entries.
pub fn gpt_first_usable() -> u64 {
    2 + GPT_ENTRY_SECTORS
}

/// Encodes `table` for a disk of `disk_size` bytes, as (offset, bytes) writes.
pub fn encode(table: &Table, disk_size: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let sectors = disk_size / SECTOR;
    let mut mbr = vec![0u8; SECTOR as usize];
    if !table.boot_code.is_empty() {
        let n = table.boot_code.len().min(440);
        mbr[..n].copy_from_slice(&table.boot_code[..n]);
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    match &table.scheme {
        Scheme::None => Ok(Vec::new()),
        Scheme::Mbr { signature } => {
            if table.partitions.iter().any(|p| p.number > 4) {
                return Err(ImageError::Invalid(
                    "writing logical MBR partitions is not supported; convert the disk to GPT"
                        .into(),
                ));
            }
            mbr[440..444].copy_from_slice(&signature.to_le_bytes());
            for p in &table.partitions {
                let PartitionType::Mbr(t) = p.ptype else {
                    return Err(ImageError::Invalid(format!(
                        "partition {} has a GPT type on an MBR disk",
                        p.number
                    )));
                };
                let start = u32::try_from(p.start / SECTOR)
                    .map_err(|_| bad("an MBR partition starts beyond 2 TiB"))?;
                let count = u32::try_from(p.size / SECTOR)
                    .map_err(|_| bad("an MBR partition is larger than 2 TiB"))?;
                mbr_entry(
                    &mut mbr,
                    p.number as usize - 1,
                    (p.attributes & 0x80) as u8,
                    t,
                    start,
                    count,
                );
            }
            Ok(vec![(0, mbr)])
        }
        Scheme::Gpt { disk_guid } => {
            let protective = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
            mbr_entry(&mut mbr, 0, 0, 0xee, 1, protective);
            let mut array = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_SIZE) as usize];
            for p in &table.partitions {
                let PartitionType::Gpt(t) = p.ptype else {
                    return Err(ImageError::Invalid(format!(
                        "partition {} has an MBR type on a GPT disk",
                        p.number
                    )));
                };
                if p.number == 0 || p.number > GPT_ENTRIES {
                    return Err(ImageError::Invalid(format!(
                        "GPT partition number {} is out of range",
                        p.number
                    )));
                }
                let e = &mut array[(p.number as usize - 1) * 128..p.number as usize * 128];
                e[..16].copy_from_slice(&t.to_bytes_le());
                e[16..32].copy_from_slice(&p.guid.unwrap_or_else(Uuid::new_v4).to_bytes_le());
                e[32..40].copy_from_slice(&(p.start / SECTOR).to_le_bytes());
                e[40..48].copy_from_slice(&((p.start + p.size) / SECTOR - 1).to_le_bytes());
                e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
                for (i, c) in p.name.encode_utf16().take(36).enumerate() {
                    e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
                }
            }
            let array_crc = crc32fast::hash(&array);
            let last_usable = sectors - gpt_tail_sectors() - 1;
            let header = |mine: u64, other: u64, entries: u64| {
                let mut h = vec![0u8; SECTOR as usize];
                h[..8].copy_from_slice(b"EFI PART");
                h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
                h[12..16].copy_from_slice(&92u32.to_le_bytes());
                h[24..32].copy_from_slice(&mine.to_le_bytes());
                h[32..40].copy_from_slice(&other.to_le_bytes());
                h[40..48].copy_from_slice(&gpt_first_usable().to_le_bytes());
                h[48..56].copy_from_slice(&last_usable.to_le_bytes());
                h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
                h[72..80].copy_from_slice(&entries.to_le_bytes());
                h[80..84].copy_from_slice(&GPT_ENTRIES.to_le_bytes());
                h[84..88].copy_from_slice(&GPT_ENTRY_SIZE.to_le_bytes());
                h[88..92].copy_from_slice(&array_crc.to_le_bytes());
                let crc = crc32fast::hash(&h[..92]);
                h[16..20].copy_from_slice(&crc.to_le_bytes());
                h
            };
            let backup_entries = sectors - gpt_tail_sectors();
            Ok(vec![
                (0, mbr),
                (SECTOR, header(1, sectors - 1, 2)),
                (2 * SECTOR, array.clone()),
                (backup_entries * SECTOR, array),
                (
                    (sectors - 1) * SECTOR,
                    header(sectors - 1, 1, backup_entries),
                ),
            ])
        }
    }
}

fn mbr_entry(mbr: &mut [u8], i: usize, status: u8, ptype: u8, start: u32, count: u32) {
    let e = &mut mbr[446 + 16 * i..462 + 16 * i];
    e[0] = status;
    // CHS addresses are meaningless on disks this size; FE FF FF says "use the LBA fields".
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = ptype;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
}
