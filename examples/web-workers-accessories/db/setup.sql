-- Run once by the postgres image on an empty data directory.
CREATE DATABASE shop_production_cache;
CREATE DATABASE shop_production_queue;
