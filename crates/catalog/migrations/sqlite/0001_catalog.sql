-- Categories and products. Times are microseconds since the Unix epoch (UTC).
CREATE TABLE categories (
    id   TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL
);

CREATE TABLE products (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    price       REAL NOT NULL CHECK (price >= 0),
    category_id TEXT NOT NULL REFERENCES categories (id),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- GET /products: newest first.
CREATE INDEX products_newest ON products (created_at DESC, id DESC);
CREATE INDEX products_category ON products (category_id);
