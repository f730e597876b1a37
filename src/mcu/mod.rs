//! MCU relay over MCUmgr/SMP.
