-- Postgres holds two databases: iceberg (the Iceberg SQL catalog, POSTGRES_DB) and mlflow (the tracking store).
CREATE DATABASE mlflow OWNER raydund;
