-- Categories and products. Ids use the C collation: byte order, as in SQLite.
CREATE TABLE categories (
    id   TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE products (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    price       DOUBLE PRECISION NOT NULL CHECK (price >= 0),
    category_id TEXT COLLATE "C" NOT NULL REFERENCES categories (id),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- GET /products: newest first.
CREATE INDEX products_newest ON products (created_at DESC, id DESC);
CREATE INDEX products_category ON products (category_id);
