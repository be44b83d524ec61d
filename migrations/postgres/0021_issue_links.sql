-- Issue customers and waivers' issues (see migrations/sqlite/0021_issue_links.sql).
CREATE TABLE issue_customers (
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    customer TEXT NOT NULL,
    PRIMARY KEY (issue_id, customer)
);
CREATE INDEX issue_customers_by_customer ON issue_customers (customer);
CREATE INDEX issue_nodes_by_node ON issue_nodes (node);
ALTER TABLE waivers ADD COLUMN issue_id BIGINT REFERENCES issues (id);
