-- Demo schema and sample rows, loaded once into the "app" database when the data volume is new.
-- The load generator (examples/load-generator.mjs) changes these tables; test/integration/demo.test.ts
-- loads this same file into a test database.

CREATE TABLE customers (
  id         serial PRIMARY KEY,
  name       text NOT NULL,
  email      text NOT NULL UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
  id    serial PRIMARY KEY,
  sku   text NOT NULL UNIQUE,
  name  text NOT NULL,
  price numeric(10, 2) NOT NULL,
  stock integer NOT NULL
);

CREATE TABLE orders (
  id          bigserial PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES customers,
  status      text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
  total       numeric(12, 2) NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
  order_id   bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
  product_id integer NOT NULL REFERENCES products,
  quantity   integer NOT NULL CHECK (quantity > 0),
  price      numeric(10, 2) NOT NULL,
  PRIMARY KEY (order_id, product_id)
);

-- Full old rows for orders: update events then carry `old` and `changed` (see README, Events).
ALTER TABLE orders REPLICA IDENTITY FULL;

INSERT INTO customers (name, email) VALUES
  ('Ada Lovelace', 'ada@example.com'),
  ('Alan Turing', 'alan@example.com'),
  ('Grace Hopper', 'grace@example.com'),
  ('Edsger Dijkstra', 'edsger@example.com');

INSERT INTO products (sku, name, price, stock) VALUES
  ('KB-01', 'Keyboard', 49.90, 100),
  ('MS-01', 'Mouse', 19.90, 200),
  ('MN-27', 'Monitor 27"', 279.00, 40),
  ('HD-02', 'Headset', 89.00, 60),
  ('CB-USB', 'USB-C cable', 9.90, 500),
  ('DK-01', 'Docking station', 159.00, 30),
  ('WC-HD', 'Webcam', 69.00, 80),
  ('LP-ST', 'Laptop stand', 39.00, 120);
