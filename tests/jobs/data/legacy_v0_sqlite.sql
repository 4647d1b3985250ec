-- A jobs.db written by the SQLite-only release (before migrations): schema and a few rows.
BEGIN TRANSACTION;
CREATE TABLE job_logs (
	id INTEGER NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	ts DOUBLE NOT NULL, 
	level VARCHAR(8) NOT NULL, 
	message TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
INSERT INTO "job_logs" VALUES(1,'e3e4453e-5568-4a6a-86c3-f09a15d933b1',1700000000.0,'INFO','Request queued');
INSERT INTO "job_logs" VALUES(2,'87dfe9f5-eace-4497-b7a3-81a7159c2301',1700000000.0,'INFO','Request queued');
CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL, 
	seq BIGINT NOT NULL, 
	owner TEXT NOT NULL, 
	app TEXT NOT NULL, 
	input TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	priority INTEGER NOT NULL, 
	created_at DOUBLE NOT NULL, 
	started_at DOUBLE, 
	finished_at DOUBLE, 
	start_deadline DOUBLE, 
	attempts INTEGER NOT NULL, 
	max_attempts INTEGER NOT NULL, 
	lease_owner TEXT, 
	lease_expires_at DOUBLE, 
	cancel_requested BOOLEAN NOT NULL, 
	result TEXT, 
	error TEXT, 
	error_type TEXT, 
	inference_time DOUBLE, 
	webhook_url TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO "jobs" VALUES('e3e4453e-5568-4a6a-86c3-f09a15d933b1',1,'alice','fal-ai/photomaker','{"prompt":"a photo of img","image_archive_url":"https://example.com/a.zip","output_format":"png","sync_mode":false}','completed',1,1700000000.0,1700000000.0,1700000000.0,NULL,1,3,NULL,NULL,0,'{"images":[{"url":"http://127.0.0.1:8000/files/tok/e3e4453e-0.png","content_type":"image/png","file_name":"e3e4453e-0.png","file_size":3,"width":8,"height":8}],"seed":1,"prompt":"a photo of img"}',NULL,NULL,1.5,'https://example.com/hook');
INSERT INTO "jobs" VALUES('87dfe9f5-eace-4497-b7a3-81a7159c2301',2,'bob','fal-ai/photomaker','{"prompt":"queued img","image_archive_url":"data:application/zip;base64,UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==","image_urls":["https://example.com/b.png"]}','queued',2,1700000000.0,NULL,NULL,NULL,0,3,NULL,NULL,0,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE webhook_deliveries (
	id INTEGER NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	owner TEXT NOT NULL, 
	url TEXT NOT NULL, 
	body TEXT NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DOUBLE NOT NULL, 
	delivered_at DOUBLE, 
	last_error TEXT, 
	given_up BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
INSERT INTO "webhook_deliveries" VALUES(1,'e3e4453e-5568-4a6a-86c3-f09a15d933b1','alice','https://example.com/hook','{"request_id":"e3e4453e-5568-4a6a-86c3-f09a15d933b1","gateway_request_id":"e3e4453e-5568-4a6a-86c3-f09a15d933b1","status":"OK","payload":{"images":[],"seed":1},"error":null}',0,1700000000.0,NULL,NULL,0);
CREATE INDEX ix_jobs_finished ON jobs (status, finished_at);
CREATE INDEX ix_jobs_owner ON jobs (owner);
CREATE INDEX ix_jobs_queue ON jobs (status, priority DESC, created_at, seq);
CREATE INDEX ix_job_logs_job ON job_logs (job_id, id);
CREATE INDEX ix_webhook_job ON webhook_deliveries (job_id);
CREATE INDEX ix_webhook_due ON webhook_deliveries (delivered_at, given_up, next_attempt_at);
COMMIT;
