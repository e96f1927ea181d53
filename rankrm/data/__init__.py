"""Ranked data: files and their formats -> RankedGroup -> token ids, prepared once into a memory-mapped store.

containers (file kinds) < groups (the data model) < splits, the format readers (pairwise, scored, oasst) < readers
(detection, read_groups) < encode (text -> tokens), store (the prepared store), inspect, convert."""
