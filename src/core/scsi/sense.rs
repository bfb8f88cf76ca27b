//! Sense data (SPC-4 §4.5): fixed (0x70) and descriptor (0x72) formats, and the
//! status / sense combinations the command handlers return.

use bytes::{BufMut, Bytes, BytesMut};

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Additional sense code and qualifier pairs used by the target.
pub mod asc {
    pub const NO_ADDITIONAL: (u8, u8) = (0x00, 0x00);
    /// LOGICAL UNIT IS IN PROCESS OF BECOMING READY: initiators retry after a delay.
    pub const BECOMING_READY: (u8, u8) = (0x04, 0x01);
    pub const LUN_NOT_READY_MANUAL: (u8, u8) = (0x04, 0x03);
    pub const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1d, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: (u8, u8) = (0x0e, 0x03);
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1a, 0x00);
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    pub const SOFTWARE_WRITE_PROTECTED: (u8, u8) = (0x27, 0x02);
    pub const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    pub const BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
    pub const I_T_NEXUS_LOSS_OCCURRED: (u8, u8) = (0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2a, 0x01);
    pub const CAPACITY_DATA_CHANGED: (u8, u8) = (0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: (u8, u8) = (0x2f, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: (u8, u8) = (0x3a, 0x00);
    pub const REPORTED_LUNS_DATA_CHANGED: (u8, u8) = (0x3f, 0x0e);
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
    pub const PROTOCOL_SERVICE_CRC_ERROR: (u8, u8) = (0x47, 0x05);
    pub const MEDIUM_REMOVAL_PREVENTED: (u8, u8) = (0x53, 0x02);
    pub const DATA_PHASE_ERROR: (u8, u8) = (0x4b, 0x00);
}

/// Where an invalid field sits, for the sense-key specific field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True if the field is in the CDB, false if in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte, if known.
    pub bit: Option<u8>,
}

/// A sense condition before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: (u8, u8),
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub fn new(key: u8, asc: (u8, u8)) -> Sense {
        Sense { key, asc, information: None, field: None }
    }

    pub fn illegal(asc: (u8, u8)) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc)
    }

    /// INVALID FIELD IN CDB, pointing at `byte` (and `bit`) of the CDB.
    pub fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense { field: Some(FieldPointer { in_cdb: true, byte, bit }), ..Sense::illegal(asc::INVALID_FIELD_IN_CDB) }
    }

    /// INVALID FIELD IN PARAMETER LIST, pointing at `byte` of the parameter data.
    pub fn invalid_param(byte: u16) -> Sense {
        Sense {
            field: Some(FieldPointer { in_cdb: false, byte, bit: None }),
            ..Sense::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
        }
    }

    pub fn with_information(mut self, info: u64) -> Sense {
        self.information = Some(info);
        self
    }

    /// Encodes as fixed (0x70) or descriptor (0x72) format.
    pub fn encode(&self, descriptor: bool) -> Bytes {
        let sks = self.field.map(|f| {
            let mut b0 = 0x80 | if f.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = f.bit {
                b0 |= 0x08 | (bit & 0x07);
            }
            let [hi, lo] = f.byte.to_be_bytes();
            [b0, hi, lo]
        });
        let mut out = BytesMut::with_capacity(32);
        if descriptor {
            out.put_slice(&[0x72, self.key & 0x0f, self.asc.0, self.asc.1, 0, 0, 0, 0]);
            if let Some(info) = self.information {
                out.put_slice(&[0x00, 0x0a, 0x80, 0x00]);
                out.put_u64(info);
            }
            if let Some(sks) = sks {
                out.put_slice(&[0x02, 0x06, 0x00, 0x00]);
                out.put_slice(&sks);
                out.put_u8(0);
            }
            out[7] = (out.len() - 8) as u8;
        } else {
            out.put_bytes(0, 18);
            out[0] = 0x70;
            out[2] = self.key & 0x0f;
            if let Some(info) = self.information {
                out[0] |= 0x80;
                // The fixed format has room for 32 bits of information.
                out[3..7].copy_from_slice(&(info.min(u32::MAX as u64) as u32).to_be_bytes());
            }
            out[7] = 10;
            out[12] = self.asc.0;
            out[13] = self.asc.1;
            if let Some(sks) = sks {
                out[15..18].copy_from_slice(&sks);
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_with_field_pointer() {
        let s = Sense::invalid_cdb(1, Some(3)).encode(false);
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], key::ILLEGAL_REQUEST);
        assert_eq!((s[12], s[13]), asc::INVALID_FIELD_IN_CDB);
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 3, 0, 1]);
    }

    #[test]
    fn descriptor_format_with_information() {
        let s = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(513).encode(true);
        assert_eq!(&s[..4], &[0x72, key::MISCOMPARE, 0x1d, 0x00]);
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0, 0x0a, 0x80, 0]);
        assert_eq!(u64::from_be_bytes(s[12..20].try_into().unwrap()), 513);
    }
}
