-- One Postgres for both servers: MLflow uses the default database `mlflow`, Prefect its own.
CREATE DATABASE prefect;
