# Astro Runtime 3.3 = Airflow 3.3. requirements.txt and packages.txt are installed by the Runtime's
# ONBUILD steps; dags/, plugins/ and include/ are copied to /usr/local/airflow.
FROM astrocrpublic.azurecr.io/runtime:3.3-1
