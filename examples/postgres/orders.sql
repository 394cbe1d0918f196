-- A table for examples/postgres/pipeline.yaml: 100,000 orders.
CREATE TABLE IF NOT EXISTS orders (
    order_id bigint PRIMARY KEY,
    customer_id int NOT NULL,
    amount numeric(12,2) NOT NULL,
    status text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders
SELECT i, i % 1000, (i % 10000) / 100.0, (ARRAY['new', 'paid', 'shipped'])[i % 3 + 1],
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * interval '1 minute'
FROM generate_series(1, 100000) i
ON CONFLICT DO NOTHING;
-- Later: UPDATE orders SET status = 'shipped', updated_at = now() WHERE order_id < 100;
-- and run the pipeline again: bronze gains those 99 rows, silver their new state.
