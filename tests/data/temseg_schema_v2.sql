-- A schema version 2 temseg database as temseg 0.1.0 wrote it (sqlite3 iterdump):
-- one model, a frame, the same content recorded again under a second path, a failed frame.
BEGIN TRANSACTION;
CREATE TABLE calibrations (
	id INTEGER NOT NULL, 
	material VARCHAR(64) NOT NULL, 
	model_id VARCHAR(128) NOT NULL, 
	threshold FLOAT NOT NULL, 
	precision FLOAT NOT NULL, 
	recall FLOAT NOT NULL, 
	dice FLOAT NOT NULL, 
	n_images INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	curve JSON NOT NULL, 
	plot_path TEXT, 
	criterion VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "calibrations" VALUES(1,'Au','m2',0.45,0.9,0.8,0.85,4,'2026-12-06 12:08:29.781564','{"t": [0.4, 0.5]}',NULL,'dice');
CREATE TABLE frames (
	id INTEGER NOT NULL, 
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
	received_at DATETIME, 
	processed_at DATETIME NOT NULL, 
	latency_ms FLOAT, 
	backend VARCHAR(32), 
	PRIMARY KEY (id), 
	CONSTRAINT uq_frames_source_sha256 UNIQUE (source_path, sha256), 
	CONSTRAINT ck_frames_status CHECK (status IN ('done', 'failed'))
);
INSERT INTO "frames" VALUES(1,'/acq/Au/a.tif','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1000,'Au','done',NULL,'m2',0.5,2,0.07,NULL,32,32,0.1,1,'2026-11-30 09:00:00.000000','2026-12-06 12:08:29.779526',12.5,'torch');
INSERT INTO "frames" VALUES(2,'/acq/copy/a.tif','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1000,'Au','done',NULL,'m2',0.5,2,0.07,NULL,32,32,0.1,2,'2026-11-30 09:00:00.000000','2026-12-06 12:08:29.781115',11.0,'torch');
INSERT INTO "frames" VALUES(3,'/acq/Au/broken.tif','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',10,'Au','failed','/acq/Au/broken.tif: not a TIFF',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,3,'2026-11-30 09:00:00.000000','2026-12-06 12:08:29.781365',1.0,NULL);
CREATE TABLE models (
	id VARCHAR(128) NOT NULL, 
	name VARCHAR(256) NOT NULL, 
	path TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	metadata JSON NOT NULL, 
	active BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "models" VALUES('m2','unet v2','/models/m2','2026-12-06 12:08:29.771638','{"metrics": {}}',1);
CREATE TABLE particles (
	id INTEGER NOT NULL, 
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
INSERT INTO "particles" VALUES(1,1,1,24,5.52790639154136798083e+00,5.52790639154136842492e-01,2.40000000000000046629e-01,3.5,5.5,2,3,6,9,0);
INSERT INTO "particles" VALUES(2,1,2,50,7.97884560802865383521e+00,7.97884560802865405726e-01,5.00000000000000111022e-01,24.5,22.0,20,20,30,25,0);
INSERT INTO "particles" VALUES(3,2,1,24,5.52790639154136798083e+00,5.52790639154136842492e-01,2.40000000000000046629e-01,3.5,5.5,2,3,6,9,0);
CREATE TABLE schema_info (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_info" VALUES(2);
CREATE INDEX ix_frames_processed_at ON frames (processed_at);
CREATE UNIQUE INDEX uq_models_one_active ON models (active) WHERE active;
CREATE INDEX ix_calibrations_material_model ON calibrations (material, model_id);
CREATE INDEX ix_particles_frame_id ON particles (frame_id);
COMMIT;
