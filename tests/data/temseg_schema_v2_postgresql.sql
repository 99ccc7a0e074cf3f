-- A schema version 2 temseg database on PostgreSQL: the DDL temseg 0.1.0's tables compile
-- to for PostgreSQL, and rows like those of temseg_schema_v2.sql.
CREATE TABLE calibrations (
	id SERIAL NOT NULL, 
	material VARCHAR(64) NOT NULL, 
	model_id VARCHAR(128) NOT NULL, 
	threshold FLOAT NOT NULL, 
	precision FLOAT NOT NULL, 
	recall FLOAT NOT NULL, 
	dice FLOAT NOT NULL, 
	n_images INTEGER NOT NULL, 
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	curve JSON NOT NULL, 
	plot_path TEXT, 
	criterion VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_calibrations_material_model ON calibrations (material, model_id);
CREATE TABLE frames (
	id SERIAL NOT NULL, 
	source_path TEXT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size_bytes INTEGER NOT NULL, 
	material VARCHAR(64), 
	status VARCHAR(16) NOT NULL, 
	error TEXT, 
	model_id VARCHAR(128), 
	threshold FLOAT, 
	n_particles INTEGER, 
	area_fraction FLOAT, 
	mask_path TEXT, 
	height INTEGER, 
	width INTEGER, 
	pixel_nm FLOAT, 
	seq INTEGER, 
	received_at TIMESTAMP WITHOUT TIME ZONE, 
	processed_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	latency_ms FLOAT, 
	backend VARCHAR(32), 
	PRIMARY KEY (id), 
	CONSTRAINT uq_frames_source_sha256 UNIQUE (source_path, sha256), 
	CONSTRAINT ck_frames_status CHECK (status IN ('done', 'failed'))
);
CREATE INDEX ix_frames_processed_at ON frames (processed_at);
CREATE TABLE models (
	id VARCHAR(128) NOT NULL, 
	name VARCHAR(256) NOT NULL, 
	path TEXT NOT NULL, 
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	metadata JSON NOT NULL, 
	active BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);
CREATE UNIQUE INDEX uq_models_one_active ON models (active) WHERE active;
CREATE TABLE schema_info (
	version SERIAL NOT NULL, 
	PRIMARY KEY (version)
);
CREATE TABLE particles (
	id SERIAL NOT NULL, 
	frame_id INTEGER NOT NULL, 
	label INTEGER NOT NULL, 
	area_px INTEGER NOT NULL, 
	equiv_diameter_px FLOAT NOT NULL, 
	equiv_diameter_nm FLOAT, 
	area_nm2 FLOAT, 
	centroid_y FLOAT NOT NULL, 
	centroid_x FLOAT NOT NULL, 
	bbox_y0 INTEGER NOT NULL, 
	bbox_x0 INTEGER NOT NULL, 
	bbox_y1 INTEGER NOT NULL, 
	bbox_x1 INTEGER NOT NULL, 
	touches_border BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(frame_id) REFERENCES frames (id) ON DELETE CASCADE
);
CREATE INDEX ix_particles_frame_id ON particles (frame_id);
INSERT INTO schema_info (version) VALUES (2);
INSERT INTO models (id, name, path, created_at, metadata, active)
    VALUES ('m2', 'unet v2', '/models/m2', '2026-12-06 12:08:29.771638', '{"metrics": {}}', true);
INSERT INTO frames (source_path, sha256, size_bytes, material, status, model_id, threshold,
    n_particles, area_fraction, height, width, pixel_nm, seq, received_at, processed_at,
    latency_ms, backend)
    VALUES ('/acq/Au/a.tif', repeat('a', 64), 1000, 'Au', 'done', 'm2', 0.5, 1, 0.07, 32, 32,
    0.1, 1, '2026-11-30 09:00:00', '2026-12-06 12:08:29.779526', 12.5, 'torch');
INSERT INTO frames (source_path, sha256, size_bytes, material, status, model_id, threshold,
    n_particles, area_fraction, height, width, pixel_nm, seq, received_at, processed_at,
    latency_ms, backend)
    VALUES ('/acq/copy/a.tif', repeat('a', 64), 1000, 'Au', 'done', 'm2', 0.5, 1, 0.07, 32, 32,
    0.1, 2, '2026-11-30 09:00:00', '2026-12-06 12:08:29.781115', 11.0, 'torch');
INSERT INTO frames (source_path, sha256, size_bytes, material, status, error, seq, received_at,
    processed_at, latency_ms)
    VALUES ('/acq/Au/broken.tif', repeat('b', 64), 10, 'Au', 'failed',
    '/acq/Au/broken.tif: not a TIFF', 3, '2026-11-30 09:00:00', '2026-12-06 12:08:29.781365', 1.0);
INSERT INTO particles (frame_id, label, area_px, equiv_diameter_px, equiv_diameter_nm, area_nm2,
    centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1, bbox_x1, touches_border)
    VALUES (1, 1, 24, 5.53, 0.553, 0.24, 3.5, 5.5, 2, 3, 6, 9, false);
INSERT INTO calibrations (material, model_id, threshold, precision, recall, dice, n_images,
    created_at, curve, plot_path, criterion)
    VALUES ('Au', 'm2', 0.45, 0.9, 0.8, 0.85, 4, '2026-12-06 12:08:29.781564', '{"t": [0.4, 0.5]}',
    NULL, 'dice');
