//! Slots: configured A/B partitions, which one is booted, and the block writer.
