DROP TABLE contact_links;
