//! How the database and each column family are tuned: one block cache
//! shared by all, partitioned indexes and filters, bodies in blob files,
//! bloom filters where lookups miss, and memtables bounded together.

use rocksdb::{BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Options};

use super::RocksConfig;
use super::direct;

/// The options to open the database with.
pub(super) struct Tuned {
    pub db: Options,
    pub log: Options,
    pub bodies: Options,
    pub ids: Options,
    pub nslog: Options,
    pub docs: Options,
    /// The small families (`meta`, `cursors`).
    pub small: Options,
    /// Whether flushes and compactions write past the page cache.
    pub direct_io: bool,
}

pub(super) fn tune(config: &RocksConfig) -> Tuned {
    let cache = Cache::new_lru_cache(config.block_cache_bytes);
    // Index and filter blocks are partitioned into blocks of a few KiB
    // with a small pinned top level: whole-file filters and indexes of
    // large files would not fit a cache shard, and would be read from
    // the file again on every lookup, slower as the store grows.
    let table = |bloom: bool| {
        let mut t = BlockBasedOptions::default();
        t.set_block_cache(&cache);
        t.set_cache_index_and_filter_blocks(true);
        t.set_pin_l0_filter_and_index_blocks_in_cache(true);
        t.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        t.set_metadata_block_size(4096);
        t.set_pin_top_level_index_and_filter(true);
        if bloom {
            t.set_bloom_filter(10.0, false);
            t.set_partition_filters(true);
        }
        t
    };

    let mut bodies = Options::default();
    bodies.set_block_based_table_factory(&table(false));
    bodies.set_compression_type(DBCompressionType::None);
    bodies.set_write_buffer_size(config.write_buffer_bytes);
    bodies.set_max_write_buffer_number(3);
    bodies.set_target_file_size_base(64 << 20);
    // Bodies go to blob files (key-value separation): the SST files
    // hold seqs and blob references only. Entries are immutable, so blob
    // garbage never builds up.
    bodies.set_enable_blob_files(true);
    bodies.set_min_blob_size(256);
    bodies.set_blob_file_size(256 << 20);
    bodies.set_blob_compression_type(DBCompressionType::None);
    let mut log = Options::default();
    log.set_block_based_table_factory(&table(false));
    log.set_compression_type(DBCompressionType::Lz4);
    log.set_write_buffer_size(config.write_buffer_bytes / 4);
    // The namespace and document indexes are read like the log: by
    // ranges, in order.
    let nslog = log.clone();
    let docs = log.clone();
    let mut small = Options::default();
    small.set_block_based_table_factory(&table(false));
    let mut ids = Options::default();
    ids.set_block_based_table_factory(&table(true));
    ids.set_compression_type(DBCompressionType::Lz4);
    ids.set_write_buffer_size(config.write_buffer_bytes / 4);
    // A bloom filter over memtable keys: most lookups (dedup on ingest)
    // are for ids not in the memtable, and skip its skiplist entirely.
    ids.set_memtable_whole_key_filtering(true);
    ids.set_memtable_prefix_bloom_ratio(0.1);

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    db_opts.set_max_open_files(config.max_open_files.min(i32::MAX as usize) as i32);
    db_opts.set_bytes_per_sync(1 << 20);
    let direct_io = config.direct_io && direct::supported(&config.path);
    db_opts.set_use_direct_io_for_flush_and_compaction(direct_io);
    db_opts.set_keep_log_file_num(3);
    db_opts.set_max_total_wal_size(256 << 20);
    // All memtables together stay within twice the bodies' memtable, so
    // memory does not grow with the number of families written at once.
    db_opts.set_db_write_buffer_size(2 * config.write_buffer_bytes);

    Tuned {
        db: db_opts,
        log,
        bodies,
        ids,
        nslog,
        docs,
        small,
        direct_io,
    }
}
