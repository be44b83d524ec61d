-- Issues set by hand: the customers an issue matters to (ListIssues filters on them and on the
-- nodes it failed on), and the issue a waiver was granted for, so a waiver can say when its
-- issue is closed.
CREATE TABLE issue_customers (
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    customer TEXT NOT NULL,
    PRIMARY KEY (issue_id, customer)
) WITHOUT ROWID;
CREATE INDEX issue_customers_by_customer ON issue_customers (customer);
CREATE INDEX issue_nodes_by_node ON issue_nodes (node);
ALTER TABLE waivers ADD COLUMN issue_id BIGINT REFERENCES issues (id);
